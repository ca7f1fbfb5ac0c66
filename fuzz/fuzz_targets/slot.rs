//! The slot parser (`c.125-m512`) never panics, and a parsed slot prints back to a string that
//! parses to the same slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serverless_core::Slot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(slot) = text.parse::<Slot>() {
        let shown = slot.to_string();
        let again: Slot = shown
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its display {shown:?} does not: {e}"));
        assert_eq!(again, slot);
    }
});
