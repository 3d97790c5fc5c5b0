//! `TestKv`: a small key-value store whose results depend on the order of ops.

use std::collections::{BTreeMap, HashSet};

use rand::RngExt as _;

use crate::state_machine::StateMachine;
use crate::types::{ClientId, Digest};

use super::workload::Workload;
use super::SimRng;

/// One `TestKv` op: set `key` to `value`. `id` is unique per submitted op, so that an op
/// executed twice is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvOp {
    /// Unique op id.
    pub id: u64,
    /// The key.
    pub key: u16,
    /// The new value.
    pub value: u64,
}

/// Encoded size of a [`KvOp`].
pub const KV_OP_BYTES: usize = 8 + 2 + 8;

impl KvOp {
    /// The op's bytes: `id (u64 LE) || key (u16 LE) || value (u64 LE)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KV_OP_BYTES);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out
    }

    /// Decodes an op; `None` unless `bytes` is exactly one encoded op.
    pub fn decode(bytes: &[u8]) -> Option<KvOp> {
        if bytes.len() != KV_OP_BYTES {
            return None;
        }
        let id = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
        let key = u16::from_le_bytes(bytes[8..10].try_into().ok()?);
        let value = u64::from_le_bytes(bytes[10..18].try_into().ok()?);
        Some(KvOp { id, key, value })
    }
}

/// The result of a `TestKv` op: the key's previous value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvResult {
    /// The key had no value.
    Absent,
    /// The key's previous value.
    Previous(u64),
    /// The op did not decode (never admitted, so never seen in a correct run).
    Malformed,
}

impl KvResult {
    /// The result's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            KvResult::Absent => vec![0],
            KvResult::Previous(v) => {
                let mut out = vec![1];
                out.extend_from_slice(&v.to_le_bytes());
                out
            }
            KvResult::Malformed => vec![2],
        }
    }

    /// Decodes a result.
    pub fn decode(bytes: &[u8]) -> Option<KvResult> {
        match bytes {
            [0] => Some(KvResult::Absent),
            [2] => Some(KvResult::Malformed),
            [1, rest @ ..] => Some(KvResult::Previous(u64::from_le_bytes(
                rest.try_into().ok()?,
            ))),
            _ => None,
        }
    }
}

/// A key-value store for the simulator: `apply` sets a key and returns its previous value, so
/// results depend on the order of ops. Its digest is maintained incrementally (an XOR of one hash
/// per key-value pair, plus the number of ops applied). It remembers every op id it applied and
/// records a violation if one is applied twice.
#[derive(Clone, Debug, Default)]
pub struct TestKv {
    values: BTreeMap<u16, u64>,
    applied: u64,
    pairs: [u8; 32],
    seen: HashSet<u64>,
    /// The XOR of the hashes of the ids in `seen`: the digest covers the exactly-once oracle
    /// too, so a snapshot from a peer cannot carry a forged one.
    seen_hash: [u8; 32],
    violations: Vec<String>,
    /// The `nondeterministic` mutant: mixed into some writes of this instance only.
    salt: Option<u64>,
}

fn pair_hash(key: u16, value: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"testkv pair");
    h.update(&key.to_le_bytes());
    h.update(&value.to_le_bytes());
    *h.finalize().as_bytes()
}

fn seen_id_hash(id: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"testkv seen");
    h.update(&id.to_le_bytes());
    *h.finalize().as_bytes()
}

fn xor_into(acc: &mut [u8; 32], h: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(h) {
        *a ^= b;
    }
}

impl TestKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that is not deterministic (the `nondeterministic` mutant): every seventh
    /// op writes its value mixed with `salt`.
    pub fn nondeterministic(salt: u64) -> Self {
        TestKv {
            salt: Some(salt),
            ..Self::default()
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: u16) -> Option<u64> {
        self.values.get(&key).copied()
    }

    /// Number of ops applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Ops applied twice (each is a violation of exactly-once execution).
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}

impl StateMachine for TestKv {
    fn admit(&self, _client: &ClientId, op: &[u8]) -> Result<(), String> {
        KvOp::decode(op)
            .map(|_| ())
            .ok_or_else(|| format!("a TestKv op has {KV_OP_BYTES} bytes, not {}", op.len()))
    }

    fn apply(&mut self, _client: &ClientId, op: &[u8]) -> Vec<u8> {
        let Some(op) = KvOp::decode(op) else {
            return KvResult::Malformed.encode();
        };
        if self.seen.insert(op.id) {
            xor_into(&mut self.seen_hash, &seen_id_hash(op.id));
        } else {
            self.violations
                .push(format!("TestKv: op {} applied twice on one replica", op.id));
        }
        self.applied += 1;
        let value = match self.salt {
            Some(salt) if op.id % 7 == 0 => op.value ^ salt.max(1),
            _ => op.value,
        };
        let previous = self.values.insert(op.key, value);
        if let Some(old) = previous {
            xor_into(&mut self.pairs, &pair_hash(op.key, old));
        }
        xor_into(&mut self.pairs, &pair_hash(op.key, value));
        match previous {
            Some(v) => KvResult::Previous(v),
            None => KvResult::Absent,
        }
        .encode()
    }

    fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"testkv state");
        h.update(&self.pairs);
        h.update(&self.seen_hash);
        h.update(&self.applied.to_le_bytes());
        Digest(*h.finalize().as_bytes())
    }

    /// The values, the count of ops applied, and the ids of the ops applied (so that
    /// exactly-once execution stays checked across a restore), in a deterministic order.
    fn snapshot(&self) -> Vec<u8> {
        let mut seen: Vec<u64> = self.seen.iter().copied().collect();
        seen.sort_unstable();
        let state = (&self.values, self.applied, seen);
        crate::codec::encode(&state).expect("TestKv state always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (values, applied, seen): (BTreeMap<u16, u64>, u64, Vec<u64>) =
            crate::codec::decode(snapshot, snapshot.len()).map_err(|e| e.to_string())?;
        let mut pairs = [0u8; 32];
        for (key, value) in &values {
            xor_into(&mut pairs, &pair_hash(*key, *value));
        }
        let mut seen_hash = [0u8; 32];
        let mut set = HashSet::with_capacity(seen.len());
        for id in seen {
            if set.insert(id) {
                xor_into(&mut seen_hash, &seen_id_hash(id));
            }
        }
        // What this instance found so far stays reported; the mutant stays on.
        let violations = std::mem::take(&mut self.violations);
        *self = TestKv {
            values,
            applied,
            pairs,
            seen: set,
            seen_hash,
            violations,
            salt: self.salt,
        };
        Ok(())
    }
}

/// The default workload: [`TestKv`] with random keys in `0..key_space` (few keys, so that ops
/// conflict often) and each op's unique id as its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvWorkload {
    /// Number of distinct keys.
    pub key_space: u16,
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload { key_space: 8 }
    }
}

impl Workload for KvWorkload {
    type App = TestKv;

    fn new_app(&self) -> TestKv {
        TestKv::new()
    }

    fn nondeterministic_app(&self, salt: u64) -> Option<TestKv> {
        Some(TestKv::nondeterministic(salt))
    }

    fn next_op(&mut self, rng: &mut SimRng, _client: usize, op_id: u64) -> Vec<u8> {
        KvOp {
            id: op_id,
            key: rng.random_range(0..self.key_space.max(1)),
            value: op_id,
        }
        .encode()
    }

    fn app_violations(&self, app: &TestKv) -> Vec<String> {
        app.violations.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_depend_on_order_and_double_apply_is_caught() {
        let c: ClientId = crate::types::PublicKey([1; 32]);
        let a = KvOp {
            id: 1,
            key: 3,
            value: 10,
        }
        .encode();
        let b = KvOp {
            id: 2,
            key: 3,
            value: 20,
        }
        .encode();
        let mut kv = TestKv::new();
        assert_eq!(KvResult::decode(&kv.apply(&c, &a)), Some(KvResult::Absent));
        assert_eq!(
            KvResult::decode(&kv.apply(&c, &b)),
            Some(KvResult::Previous(10))
        );
        assert!(kv.violations().is_empty());
        kv.apply(&c, &a);
        assert_eq!(kv.violations().len(), 1);

        let mut x = TestKv::new();
        let mut y = TestKv::new();
        x.apply(&c, &a);
        x.apply(&c, &b);
        y.apply(&c, &b);
        y.apply(&c, &a);
        assert_ne!(x.digest(), y.digest());
        assert!(x.admit(&c, b"short").is_err());
    }

    #[test]
    fn a_snapshot_restores_the_same_state_and_refuses_garbage() {
        let c: ClientId = crate::types::PublicKey([1; 32]);
        let op = |id: u64, key: u16| {
            KvOp {
                id,
                key,
                value: id * 10,
            }
            .encode()
        };
        let mut kv = TestKv::new();
        for id in 0..20 {
            kv.apply(&c, &op(id, (id % 5) as u16));
        }
        let mut restored = TestKv::new();
        restored.restore(&kv.snapshot()).expect("restore");
        assert_eq!(restored.digest(), kv.digest());
        assert_eq!(restored.snapshot(), kv.snapshot());
        // It behaves the same from there on, exactly-once checks included.
        assert_eq!(restored.apply(&c, &op(20, 1)), kv.apply(&c, &op(20, 1)));
        restored.apply(&c, &op(3, 0));
        assert_eq!(restored.violations().len(), 1);
        for garbage in [&b""[..], b"\xc1", &[0x93, 0xff, 0xff, 0xff][..]] {
            assert!(TestKv::new().restore(garbage).is_err());
        }
        let mut recorder = crate::testing::Recorder::default();
        recorder.apply(&c, b"one");
        let mut back = crate::testing::Recorder::default();
        back.restore(&recorder.snapshot()).expect("restore");
        assert_eq!(back.digest(), recorder.digest());
    }
}
