//! Length-prefixed frames on a QUIC stream: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against the stream's limit as soon as its 4 bytes arrive, before
//! anything is allocated for the body, and the decoder never buffers more than one frame plus
//! one read. The same [`FrameDecoder`] reads every stream and is what the fuzz target drives.

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Why a stream's bytes are not a sequence of acceptable frames.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame announced a body above the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit on this stream.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended {missing} bytes short of a complete frame")]
    Truncated {
        /// Bytes still missing.
        missing: usize,
    },
}

/// Appends `payload` as one frame to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// One frame, ready to send.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    encode_frame(payload, &mut out);
    out
}

/// Splits a byte stream into frames of at most `limit` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    limit: usize,
    buf: Vec<u8>,
    /// The body length of the frame being read, once its header is in.
    body: Option<usize>,
}

impl FrameDecoder {
    /// A decoder refusing frames above `limit` bytes. `limit` must fit the 4-byte prefix.
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            limit: limit.min(u32::MAX as usize),
            buf: Vec::new(),
            body: None,
        }
    }

    /// Takes the next bytes of the stream, and the frames they complete, in order. After an
    /// error the stream is unusable (the caller closes it).
    pub fn push(&mut self, mut bytes: &[u8], frames: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            let want = match self.body {
                None => HEADER_BYTES - self.buf.len(),
                Some(len) => len - self.buf.len(),
            };
            let take = want.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.advance(frames)?;
        }
        // A zero-length body completes without bytes.
        self.advance(frames)
    }

    fn advance(&mut self, frames: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
        loop {
            match self.body {
                None if self.buf.len() == HEADER_BYTES => {
                    let mut header = [0u8; HEADER_BYTES];
                    header.copy_from_slice(&self.buf);
                    let len = u32::from_be_bytes(header) as usize;
                    if len > self.limit {
                        return Err(FrameError::TooLarge {
                            len: len as u64,
                            limit: self.limit,
                        });
                    }
                    self.buf.clear();
                    // Nothing is reserved: the body grows only as its bytes arrive.
                    self.body = Some(len);
                }
                Some(len) if self.buf.len() == len => {
                    frames.push(std::mem::take(&mut self.buf));
                    self.body = None;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
    }

    /// Checks the stream ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        let missing = match self.body {
            None if self.buf.is_empty() => return Ok(()),
            None => HEADER_BYTES - self.buf.len(),
            Some(len) => len - self.buf.len(),
        };
        Err(FrameError::Truncated { missing })
    }
}

/// Why a stream was closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// Bad framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// QUIC reported an error.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
}

/// Reads frames from `recv` into `frames` until at least one is complete; `Ok(false)` when the
/// stream ended cleanly between frames.
pub(crate) async fn read_frames(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
    frames: &mut Vec<Vec<u8>>,
) -> Result<bool, StreamError> {
    while frames.is_empty() {
        match recv.read_chunk(64 << 10, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes, frames)?,
            None => {
                decoder.finish()?;
                return Ok(!frames.is_empty());
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], limit: usize, step: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut d = FrameDecoder::new(limit);
        let mut frames = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            d.push(chunk, &mut frames)?;
        }
        d.finish()?;
        Ok(frames)
    }

    #[test]
    fn frames_survive_any_split() {
        let payloads: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![], vec![7; 300], b"x".to_vec()];
        let mut bytes = Vec::new();
        for p in &payloads {
            encode_frame(p, &mut bytes);
        }
        for step in 1..=bytes.len() {
            assert_eq!(
                decode_all(&bytes, 1000, step).unwrap(),
                payloads,
                "step {step}"
            );
        }
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_body_arrives() {
        let mut d = FrameDecoder::new(100);
        let mut frames = Vec::new();
        let err = d.push(&101u32.to_be_bytes(), &mut frames).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 101,
                limit: 100
            }
        );
        assert!(d.buf.capacity() < 100);
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let bytes = frame(b"hello");
        assert_eq!(
            decode_all(&bytes[..6], 100, 3),
            Err(FrameError::Truncated { missing: 3 })
        );
        assert_eq!(
            decode_all(&bytes[..2], 100, 3),
            Err(FrameError::Truncated { missing: 2 })
        );
    }
}
