//! The config loader on any text: a validated config or an error naming
//! the key; never a panic.
#![no_main]
use bursar::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = Config::parse_file(text) {
        let _ = Config::from_file(file, None);
    }
});
