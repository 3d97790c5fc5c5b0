//! The bounded wire codec (MessagePack via rmp-serde).
//!
//! Every decoder of untrusted bytes goes through [`decode`]: the size limit is checked before any
//! decoding, nesting depth is bounded, nothing is allocated beyond what the input holds, and
//! trailing bytes are an error. It never panics on any input.

use serde::{de::DeserializeOwned, Serialize};

/// Why bytes could not be decoded or a value encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input is larger than the limit; it was not decoded.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The input is not a valid encoding of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The input holds a valid value followed by extra bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The value could not be encoded (should not happen for protocol types).
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl CodecError {
    /// A short, stable label for counting refusals by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::TooLarge { .. } => "too-large",
            CodecError::Malformed(_) => "malformed",
            CodecError::TrailingBytes(_) => "trailing-bytes",
            CodecError::Encode(_) => "encode",
        }
    }
}

/// Maximum nesting depth of any protocol message; deeper input is refused.
const MAX_DEPTH: usize = 32;

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes a value at the end of `out` (no intermediate buffer).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    rmp_serde::encode::write(out, value).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value from untrusted bytes, refusing inputs above `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    // A `&[u8]` reader copies at most what the input holds: a length prefix that claims more
    // than the input makes the read fail instead of allocating.
    let mut de = rmp_serde::Deserializer::new(bytes);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let rest = de.get_ref().len();
    if rest != 0 {
        return Err(CodecError::TrailingBytes(rest));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_oversized_before_decoding() {
        let bytes = encode(&vec![0u8; 100]).unwrap();
        assert!(matches!(
            decode::<Vec<u8>>(&bytes, 50),
            Err(CodecError::TooLarge { limit: 50, .. })
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&7u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes, 1024),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // bin32 claiming 4 GiB, with 3 bytes of payload.
        let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            decode::<serde_bytes::ByteBuf>(&bytes, 1024),
            Err(CodecError::Malformed(_))
        ));
        // array32 claiming 4 billion elements.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 1];
        assert!(decode::<Vec<u64>>(&bytes, 1024).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let bytes = vec![0x91; 1000]; // 1000 nested one-element arrays
        assert!(decode::<Vec<Vec<u8>>>(&bytes, 4096).is_err());
    }
}
