//! The stream framing of every QUIC stream (`raft_bft_net::frame::FrameDecoder`).
//!
//! Input: control bytes (see `raft_bft_fuzz::frame_control`: a limit, a chunking pattern),
//! then the stream. The stream is pushed chunk by chunk and checked after every push against
//! the framing rules, and the end result against a plain whole-stream decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_bft_fuzz::frame_control;
use raft_bft_net::frame::{encode_frame, FrameDecoder, FrameError, HEADER_BYTES};

/// The announced body length in the 4 bytes at the start of `bytes`.
fn header(bytes: &[u8]) -> usize {
    u32::from_be_bytes(bytes[..HEADER_BYTES].try_into().unwrap()) as usize
}

/// A whole-stream decode, the obvious way: the frames, and either the error a push must report
/// or the verdict of `finish`.
type Outcome = Result<Result<(), FrameError>, FrameError>;

fn reference(stream: &[u8], limit: usize) -> (Vec<Vec<u8>>, Outcome) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < HEADER_BYTES {
            let finish = if rest.is_empty() {
                Ok(())
            } else {
                Err(FrameError::Truncated {
                    missing: HEADER_BYTES - rest.len(),
                })
            };
            return (frames, Ok(finish));
        }
        let len = header(rest);
        if len > limit {
            return (
                frames,
                Err(FrameError::TooLarge {
                    len: len as u64,
                    limit,
                }),
            );
        }
        let body = &rest[HEADER_BYTES..];
        if body.len() < len {
            return (
                frames,
                Ok(Err(FrameError::Truncated {
                    missing: len - body.len(),
                })),
            );
        }
        frames.push(body[..len].to_vec());
        rest = &body[len..];
    }
}

/// Checks what a push produced: `new` frames, each within the limit, whose encoding continues
/// the re-encoded prefix `encoded` of `stream`.
fn check_new_frames(stream: &[u8], encoded: &mut Vec<u8>, new: &[Vec<u8>], limit: usize) {
    for f in new {
        assert!(
            f.len() <= limit,
            "a frame of {} bytes above the limit {limit}",
            f.len()
        );
        let start = encoded.len();
        encode_frame(f, encoded);
        assert!(
            encoded.len() <= stream.len(),
            "frames re-encode past the stream's end"
        );
        assert_eq!(
            &encoded[start..],
            &stream[start..encoded.len()],
            "re-encoding the frames does not reproduce the stream"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(ctl) = frame_control(data) else {
        return;
    };
    let limit = ctl.limit.min(u32::MAX as usize);
    let stream = ctl.stream;
    let whole = ctl.pattern.iter().all(|&b| b == 0);

    let mut decoder = FrameDecoder::new(ctl.limit);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut encoded = Vec::new(); // the frames so far, re-encoded: a prefix of the stream
    let mut consumed = 0; // bytes pushed without an error
    let mut error = None;
    let mut turn = 0;
    // A final empty push after the stream (and the only push of an empty stream).
    let mut final_empty_push = false;
    while !final_empty_push {
        let left = stream.len() - consumed;
        let take = if whole {
            left
        } else {
            usize::from(ctl.pattern[turn % ctl.pattern.len()]).min(left)
        };
        turn += 1;
        final_empty_push = left == 0;
        let chunk = &stream[consumed..consumed + take];
        let before = frames.len();
        let result = decoder.push(chunk, &mut frames);
        check_new_frames(stream, &mut encoded, &frames[before..], limit);
        match result {
            Ok(()) => {
                consumed += take;
                assert!(
                    encoded.len() <= consumed,
                    "frames from bytes not yet pushed"
                );
                // What is left over after the complete frames is an unfinished frame.
                let partial = &stream[encoded.len()..consumed];
                if partial.len() >= HEADER_BYTES {
                    let len = header(partial);
                    assert!(len <= limit, "an oversized header was accepted");
                    assert!(
                        partial.len() - HEADER_BYTES < len,
                        "a complete frame of {len} bytes was not handed out"
                    );
                }
            }
            Err(e) => {
                // Only an oversized header fails a push, and it is the one after the last frame.
                let at = encoded.len();
                assert!(
                    at + HEADER_BYTES <= consumed + take,
                    "an error before a header arrived"
                );
                let len = header(&stream[at..]);
                assert_eq!(
                    e,
                    FrameError::TooLarge {
                        len: len as u64,
                        limit
                    }
                );
                assert!(len > limit);
                error = Some(e);
                break; // the stream is unusable after an error
            }
        }
    }

    let (expected_frames, expected) = reference(stream, limit);
    assert_eq!(frames, expected_frames, "chunking changed the frames");
    match error {
        Some(e) => assert_eq!(Err(e), expected, "chunking changed the error"),
        None => {
            let finish = decoder.finish();
            assert_eq!(finish.is_ok(), encoded.len() == stream.len());
            assert_eq!(
                Ok(finish),
                expected,
                "chunking changed the end of the stream"
            );
        }
    }
});
