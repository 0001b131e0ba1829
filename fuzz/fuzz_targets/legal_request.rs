#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgerun_fuzz::legal_request(data));
