//! Port discovery's `/proc/net/tcp{,6}` parser never panics on any text (garbage, truncated
//! reads), and the chosen port is one of the listeners, the preferred one when it listens.
//!
//! The parser's source file is compiled in directly: it is plain `std` code, and this keeps the
//! fuzz build free of containerd's gRPC stack.
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../serverless-containerd/src/ports.rs"]
mod ports;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (preferred, table) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => (8080, data),
    };
    let table = String::from_utf8_lossy(table);
    let listeners = ports::parse_listeners(&table);
    match ports::choose(&listeners, preferred) {
        None => assert!(listeners.is_empty()),
        Some(chosen) => {
            assert!(listeners.contains(&chosen));
            if listeners.iter().any(|l| l.port == preferred) {
                assert_eq!(chosen.port, preferred);
            }
            let _ = chosen.dial_addr();
        }
    }
});
