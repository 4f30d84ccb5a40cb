//! The open-file limit a node runs with.
//!
//! Every connection is one file descriptor, and a waiting long poll keeps its connection open
//! for up to 30 s, so a node holding `max_waiting_polls` of them needs at least that many fds.
//! Many systems start processes with a soft limit of 1024 and a much higher hard limit; the node
//! raises its soft limit to the hard one at start-up (as Go programs do) and says so when even
//! that is too low.

/// Highest soft limit asked for: Linux refuses more than `fs.nr_open` (1,048,576 by default),
/// and a hard limit of "unlimited" would otherwise be asked for as such.
const FD_LIMIT_CEILING: libc::rlim_t = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped); returns the soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_to_hard_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let current = limit.rlim_cur;
    let target = limit.rlim_max.min(FD_LIMIT_CEILING);
    if current >= target {
        return Ok(current);
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(target)
}

/// File descriptors a node needs besides its waiting polls: the store, listeners, peer links,
/// ordinary clients, the blocking pool.
pub const FDS_BESIDES_WAITING_POLLS: u64 = 1024;

/// Raises the limit and warns when it cannot hold `max_waiting_polls` long polls.
pub fn ensure_room_for(max_waiting_polls: usize) {
    let needed = max_waiting_polls as u64 + FDS_BESIDES_WAITING_POLLS;
    match raise_to_hard_limit() {
        Ok(limit) if limit < needed => tracing::warn!(
            fd_limit = limit,
            needed,
            "the open-file limit is too low for MESH_DM_MAX_WAITING_POLLS={max_waiting_polls}; \
             raise it (ulimit -n, or LimitNOFILE= in the systemd unit) or lower the setting"
        ),
        Ok(limit) => tracing::debug!(fd_limit = limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_up_at_the_capped_hard_limit() {
        let limit = super::raise_to_hard_limit().unwrap();
        assert_eq!(super::raise_to_hard_limit().unwrap(), limit, "idempotent");
        assert!(limit >= 1, "{limit}");
    }
}
