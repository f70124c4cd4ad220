#![no_main]
// The harness lives in the library (src/fuzzing/), where the test suite replays this target's
// seeds and past crashes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::tool_definition(data));
