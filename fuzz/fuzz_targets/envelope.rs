#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmrelay_fuzz::envelope(data));
