//! The lean HTTP/1.1 client's response framing (head parser) and body decoding (lengths,
//! chunks, trailers) never panic on any bytes an instance may send, never yield more body than
//! was sent, give a `Content-Length` body exactly that length, never pass a `Content-Length`
//! on twice or next to a transfer coding, refuse more than 16 interim (1xx) heads, and reach
//! the same outcome whether the bytes arrive at once or in pieces (the first input byte picks
//! the method and the piece size).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    serverless_proxy::fuzzing::h1_response(data);
});
