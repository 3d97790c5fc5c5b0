//! Deterministic signature validity.
//!
//! Correct replicas must agree on every signature, whichever path checks it: a client tx is
//! checked alone when it is forwarded (`Verifier::verify_tx`) and inside a batch when it arrives
//! in a PreAppend (`Verifier::verify_entry`). If single and batch verification used different
//! equations (cofactorless vs cofactored), a Byzantine client could craft a signature that some
//! correct replicas accept and others refuse, and split them.
//!
//! This test crafts the signatures on which verification rules disagree:
//! - a valid signature whose `R` has a small-order (torsion) component added;
//! - a key `A` with a torsion component (a "mixed-order" key);
//! - small-order keys (weak keys), which "sign" every message;
//! - non-canonical `s` (`s >= l`) and non-canonical point encodings of `R` and `A`;
//! - undecodable points, and a torsioned signature over another message.
//!
//! For each, it states the verdict of our rules (ZIP-215) up front, and checks that
//! `crypto::verify`, `crypto::BatchVerifier` (alone, in a batch of copies of itself, mixed at any
//! position into batches of 2, 16 and 64 valid signatures, under many coefficient seeds) and the
//! tx paths of `Verifier` all give exactly that verdict. It also shows that plain
//! `ed25519-dalek` (cofactorless `verify_strict` and `verify`) gives a different verdict on the
//! torsion and encoding cases, so these cases really exercise the edge.

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use raft_bft::config::Params;
use raft_bft::crypto::{self, coefficient_rng, BatchVerifier, KeyPair, SignatureError};
use raft_bft::manifest::{Cluster, Manifest, ReplicaInfo};
use raft_bft::message::{Entry, SignedTx};
use raft_bft::types::{Digest, Index, PublicKey, ReplicaId, Signature, Term};
use raft_bft::verify::{Verifier, VerifyError};
use sha2::{Digest as _, Sha512};
use std::sync::Arc;

/// The order of the prime subgroup, `l = 2^252 + 27742317777372353535851937790883648493`,
/// little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `y = 1 + p` (non-canonical encoding of the identity, `y = 1`), sign bit clear.
const IDENTITY_Y_PLUS_P: [u8; 32] = {
    let mut b = [0xff; 32];
    b[0] = 0xee;
    b[31] = 0x7f;
    b
};

/// `y = 1`, sign bit set: "negative zero" `x`, a non-canonical encoding of the identity.
const IDENTITY_NEG_ZERO: [u8; 32] = {
    let mut b = [0; 32];
    b[0] = 1;
    b[31] = 0x80;
    b
};

/// `y = p` (non-canonical encoding of `y = 0`, a point of order 4).
const ORDER4_Y_P: [u8; 32] = {
    let mut b = [0xff; 32];
    b[0] = 0xed;
    b[31] = 0x7f;
    b
};

const OK: Result<(), SignatureError> = Ok(());
const INVALID: Result<(), SignatureError> = Err(SignatureError::Invalid);
const MALFORMED_KEY: Result<(), SignatureError> = Err(SignatureError::MalformedKey);

/// The ed25519 challenge `k = SHA-512(R || A || M) mod l` over the raw encodings.
fn challenge(r: &[u8; 32], a: &[u8; 32], msg: &[u8; 32]) -> Scalar {
    Scalar::from_hash(
        Sha512::new()
            .chain_update(r)
            .chain_update(a)
            .chain_update(msg),
    )
}

fn scalar(label: &str, extra: &[u8]) -> Scalar {
    Scalar::from_hash(
        Sha512::new()
            .chain_update(label.as_bytes())
            .chain_update(extra),
    )
}

fn sig(r: [u8; 32], s: [u8; 32]) -> Signature {
    let mut b = [0; 64];
    b[..32].copy_from_slice(&r);
    b[32..].copy_from_slice(&s);
    Signature(b)
}

/// Little-endian 256-bit addition (no overflow for the values used here).
fn add_le(a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// The secret scalar of the test's "honest-looking" key.
fn secret() -> Scalar {
    scalar("secret", b"")
}

/// Signs `msg` with secret `a` under the (possibly torsioned) key encoding `a_bytes`, with
/// nonce point `r_point = [r]B + torsion`: `s = r + k a`, `k = H(R || A || msg)`.
fn sign_raw(
    a: &Scalar,
    a_bytes: &[u8; 32],
    r: &Scalar,
    r_point: &EdwardsPoint,
    msg: &[u8; 32],
) -> Signature {
    let r_bytes = r_point.compress().to_bytes();
    let k = challenge(&r_bytes, a_bytes, msg);
    sig(r_bytes, (r + k * a).to_bytes())
}

type Signer = Box<dyn Fn(&Digest) -> Signature>;

/// A crafted case: a key, how to sign any message with it, and the verdict our rules must give.
struct Case {
    name: String,
    key: PublicKey,
    sign: Signer,
    expect: Result<(), SignatureError>,
}

fn case(
    name: impl Into<String>,
    key: [u8; 32],
    expect: Result<(), SignatureError>,
    sign: impl Fn(&Digest) -> Signature + 'static,
) -> Case {
    Case {
        name: name.into(),
        key: PublicKey(key),
        sign: Box::new(sign),
        expect,
    }
}

/// Every crafted case.
fn cases() -> Vec<Case> {
    let a = secret();
    let a_point = EdwardsPoint::mul_base(&a);
    let a_bytes = a_point.compress().to_bytes();
    let nonce =
        |tag: &str, msg: &Digest, i: u32| scalar(tag, &[&msg.0[..], &i.to_le_bytes()].concat());
    let mut out = Vec::new();

    // Control: an ordinary signature.
    out.push(case("standard", a_bytes, OK, move |m| {
        let r = nonce("standard", m, 0);
        sign_raw(&a, &a_bytes, &r, &EdwardsPoint::mul_base(&r), &m.0)
    }));

    for (i, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let t = *t;
        // R = [r]B + T: cofactorless verification recomputes [r]B and refuses.
        out.push(case(format!("torsion-R[{i}]"), a_bytes, OK, move |m| {
            let r = nonce("torsion-R", m, 0);
            sign_raw(&a, &a_bytes, &r, &(EdwardsPoint::mul_base(&r) + t), &m.0)
        }));

        // A' = [a]B + T: cofactorless verification sees an extra -[k]T, which vanishes only when
        // T's order divides k: a coin flip per message. Two variants: one where [k]T != 0 (the
        // splitting case) and one where [k]T = 0 (cofactorless accepts too).
        let mixed = (a_point + t).compress().to_bytes();
        for kills in [false, true] {
            let name = format!("torsion-A[{i}]{}", if kills { "-k-kills-T" } else { "" });
            out.push(case(name, mixed, OK, move |m| {
                for j in 0.. {
                    let r = nonce("torsion-A", m, j);
                    let r_point = EdwardsPoint::mul_base(&r);
                    let k = challenge(&r_point.compress().to_bytes(), &mixed, &m.0);
                    if (t * k).is_identity() == kills {
                        return sign_raw(&a, &mixed, &r, &r_point, &m.0);
                    }
                }
                unreachable!()
            }));
        }
    }

    // Torsion on both R and A. Cofactorless verification accepts iff -[k]T_A = T_R, which
    // depends on k; pick nonces where it does not hold.
    let (t_a, t_r) = (EIGHT_TORSION[3], EIGHT_TORSION[5]);
    let mixed = (a_point + t_a).compress().to_bytes();
    out.push(case("torsion-R-and-A", mixed, OK, move |m| {
        for j in 0.. {
            let r = nonce("torsion-both", m, j);
            let r_point = EdwardsPoint::mul_base(&r) + t_r;
            let k = challenge(&r_point.compress().to_bytes(), &mixed, &m.0);
            if !(t_a * k + t_r).is_identity() {
                return sign_raw(&a, &mixed, &r, &r_point, &m.0);
            }
        }
        unreachable!()
    }));

    // Weak keys: A of small order (the identity for i = 0). [8][k]A = 0, so (R = 0, s = 0)
    // and (R = [r]B, s = r) are valid on every message under the cofactored equation.
    for (i, t) in EIGHT_TORSION.iter().enumerate() {
        let weak = t.compress().to_bytes();
        out.push(case(
            format!("weak-key[{i}]-zero-sig"),
            weak,
            OK,
            move |_| sig(EdwardsPoint::default().compress().to_bytes(), [0; 32]),
        ));
        out.push(case(format!("weak-key[{i}]-any-R"), weak, OK, move |m| {
            let r = nonce("weak", m, 0);
            sig(
                EdwardsPoint::mul_base(&r).compress().to_bytes(),
                r.to_bytes(),
            )
        }));
    }

    // Non-canonical s: refused by everyone, even where the equation holds mod l.
    out.push(case("s-plus-l", a_bytes, INVALID, move |m| {
        let r = nonce("s+l", m, 0);
        let good = sign_raw(&a, &a_bytes, &r, &EdwardsPoint::mul_base(&r), &m.0);
        let s: [u8; 32] = good.0[32..].try_into().unwrap();
        sig(good.0[..32].try_into().unwrap(), add_le(s, L))
    }));
    out.push(case("s-high-bits", a_bytes, INVALID, move |m| {
        let r = nonce("s-high", m, 0);
        let mut good = sign_raw(&a, &a_bytes, &r, &EdwardsPoint::mul_base(&r), &m.0);
        good.0[63] |= 0xe0;
        good
    }));
    let identity = EdwardsPoint::default().compress().to_bytes();
    out.push(case("weak-key-s-equals-l", identity, INVALID, move |_| {
        sig(identity, L)
    }));

    // Non-canonical encodings of small-order R, with s = k a so that [s]B - [k]A = 0:
    // cofactored verification accepts (R is killed by [8]); cofactorless recomputes the
    // canonical identity and refuses the encoding; verify_strict refuses small-order R.
    for (name, r_bytes) in [
        ("R-identity-canonical", identity),
        ("R-identity-y-plus-p", IDENTITY_Y_PLUS_P),
        ("R-identity-negative-zero", IDENTITY_NEG_ZERO),
        ("R-identity-y-plus-p-negative", {
            let mut b = IDENTITY_Y_PLUS_P;
            b[31] |= 0x80;
            b
        }),
        ("R-order4-y-p", ORDER4_Y_P),
        ("R-order4-y-p-negative", {
            let mut b = ORDER4_Y_P;
            b[31] |= 0x80;
            b
        }),
    ] {
        out.push(case(name, a_bytes, OK, move |m| {
            let k = challenge(&r_bytes, &a_bytes, &m.0);
            sig(r_bytes, (k * a).to_bytes())
        }));
    }

    // A non-canonical encoding of a weak key.
    out.push(case(
        "A-identity-y-plus-p",
        IDENTITY_Y_PLUS_P,
        OK,
        move |_| sig(identity, [0; 32]),
    ));

    // Undecodable points.
    let off_curve = (2u8..)
        .map(|y| {
            let mut b = [0; 32];
            b[0] = y;
            b
        })
        .find(|b| CompressedEdwardsY(*b).decompress().is_none())
        .unwrap();
    out.push(case("R-off-curve", a_bytes, INVALID, move |m| {
        let k = challenge(&off_curve, &a_bytes, &m.0);
        sig(off_curve, (k * a).to_bytes())
    }));
    out.push(case("A-off-curve", off_curve, MALFORMED_KEY, move |_| {
        sig(identity, [0; 32])
    }));

    // A torsioned signature over another message is still refused: the edge does not make
    // everything valid.
    out.push(case(
        "torsion-R-wrong-message",
        a_bytes,
        INVALID,
        move |m| {
            let mut other = m.0;
            other[0] ^= 1;
            let r = nonce("wrong", m, 0);
            sign_raw(
                &a,
                &a_bytes,
                &r,
                &(EdwardsPoint::mul_base(&r) + EIGHT_TORSION[1]),
                &other,
            )
        },
    ));
    out
}

/// `(verify, verify_strict)` of plain ed25519-dalek (both cofactorless).
fn dalek(key: &PublicKey, msg: &Digest, s: &Signature) -> (bool, bool) {
    use ed25519_dalek::Verifier as _;
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key.0) else {
        return (false, false);
    };
    let s = ed25519_dalek::Signature::from_bytes(&s.0);
    (
        vk.verify(&msg.0, &s).is_ok(),
        vk.verify_strict(&msg.0, &s).is_ok(),
    )
}

/// Ordinary valid signatures to mix crafted ones into (a few keys sign several items, so the
/// batch also groups by key).
fn fillers(count: usize) -> Vec<(PublicKey, Digest, Signature)> {
    (0..count)
        .map(|i| {
            let key = KeyPair::from_seed([(i % 5) as u8 + 1; 32]);
            let digest = Digest(*blake3::hash(&(i as u64).to_le_bytes()).as_bytes());
            (key.public(), digest, key.sign(&digest))
        })
        .collect()
}

fn msg(i: usize) -> Digest {
    Digest(*blake3::hash(format!("message {i}").as_bytes()).as_bytes())
}

#[test]
fn constants_are_what_they_claim() {
    assert_eq!(Scalar::from_bytes_mod_order(L), Scalar::ZERO);
    assert!(bool::from(Scalar::from_canonical_bytes(L).is_none()));
    let id = CompressedEdwardsY(IDENTITY_Y_PLUS_P).decompress().unwrap();
    assert!(id.is_identity());
    assert!(CompressedEdwardsY(IDENTITY_NEG_ZERO)
        .decompress()
        .unwrap()
        .is_identity());
    let t4 = CompressedEdwardsY(ORDER4_Y_P).decompress().unwrap();
    assert!(!t4.is_identity() && (t4 + t4 + t4 + t4).is_identity() && !(t4 + t4).is_identity());
    for enc in [IDENTITY_Y_PLUS_P, IDENTITY_NEG_ZERO, ORDER4_Y_P] {
        assert_ne!(
            CompressedEdwardsY(enc)
                .decompress()
                .unwrap()
                .compress()
                .to_bytes(),
            enc,
            "non-canonical"
        );
    }
    assert!(EIGHT_TORSION[0].is_identity());
    for t in &EIGHT_TORSION[1..] {
        assert!(t.is_small_order() && !t.is_identity());
    }
}

#[test]
fn single_verification_gives_the_stated_verdict_and_dalek_disagrees_on_the_edges() {
    let cases = cases();
    let mut split_strict = 0;
    let mut split_plain = 0;
    for c in &cases {
        for i in 0..3 {
            let m = msg(i);
            let s = (c.sign)(&m);
            let ours = crypto::verify(&c.key, &m, &s);
            assert_eq!(ours, c.expect, "{} on message {i}", c.name);
            let (plain, strict) = dalek(&c.key, &m, &s);
            // What plain ed25519-dalek says, case by case: the torsion and encoding cases are
            // exactly where it differs from us.
            let (want_plain, want_strict) = match c.name.as_str() {
                // What we refuse, dalek refuses too.
                _ if c.expect.is_err() => (false, false),
                "standard" => (true, true),
                n if n.ends_with("-k-kills-T") => (true, true),
                n if n.starts_with("torsion-") => (false, false),
                // The identity key: [k]A = 0 whatever k, so cofactorless accepts as we do.
                n if n.starts_with("weak-key[0]") => (true, false),
                // Other weak keys: cofactorless accepts iff [k]A = 0, a coin flip per message.
                n if n.starts_with("weak-key[") => (plain, false),
                "R-identity-canonical" | "A-identity-y-plus-p" => (true, false),
                n if n.starts_with("R-") => (false, false),
                n => panic!("no dalek expectation for {n}"),
            };
            assert_eq!(
                (plain, strict),
                (want_plain, want_strict),
                "dalek on {} message {i}",
                c.name
            );
            if c.expect.is_ok() != strict {
                split_strict += 1;
            }
            if c.expect.is_ok() != plain {
                split_plain += 1;
            }
        }
    }
    // The crafted set really exercises the edge: many cases split cofactorless from cofactored.
    assert!(split_strict >= 30 * 3, "{split_strict}");
    assert!(split_plain >= 20 * 3, "{split_plain}");
    // In particular every torsion-R case, on yet another message: we accept, dalek refuses.
    for c in cases.iter().filter(|c| c.name.starts_with("torsion-R[")) {
        let m = msg(9);
        let s = (c.sign)(&m);
        assert_eq!(crypto::verify(&c.key, &m, &s), OK, "{}", c.name);
        assert_eq!(dalek(&c.key, &m, &s), (false, false), "{}", c.name);
    }
}

/// Checks `items` with our BatchVerifier under `seed`, and with ed25519-zebra's raw batch
/// equation (no per-item fallback), against the single verdicts.
fn check_batch(items: &[(PublicKey, Digest, Signature)], seed: [u8; 32], what: &str) {
    let single: Vec<_> = items
        .iter()
        .map(|(k, d, s)| crypto::verify(k, d, s))
        .collect();
    let mut batch = BatchVerifier::new();
    for (k, d, s) in items {
        batch.push(*k, *d, *s);
    }
    let mut rng = coefficient_rng(seed);
    assert_eq!(batch.verify(&mut rng), single, "{what}, seed {seed:?}");
    if items.len() >= 2 {
        // The batch equation itself agrees: it passes exactly when every item is valid, so
        // accepted crafted items were accepted by the batch check, not by a fallback.
        let mut raw = ed25519_zebra::batch::Verifier::new();
        for (k, d, s) in items {
            raw.queue((
                ed25519_zebra::VerificationKeyBytes::from(k.0),
                ed25519_zebra::Signature::from_bytes(&s.0),
                &d.0,
            ));
        }
        let mut rng = coefficient_rng(seed);
        assert_eq!(
            raw.verify(&mut rng).is_ok(),
            single.iter().all(Result::is_ok),
            "raw batch: {what}"
        );
    }
}

fn seed(i: u64, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s
}

#[test]
fn batch_verification_agrees_with_single_verification() {
    let cases = cases();
    let fill = fillers(63);
    let m = msg(0);
    let crafted: Vec<(PublicKey, Digest, Signature)> =
        cases.iter().map(|c| (c.key, m, (c.sign)(&m))).collect();
    for (c, item) in cases.iter().zip(&crafted) {
        assert_eq!(
            crypto::verify(&item.0, &item.1, &item.2),
            c.expect,
            "{}",
            c.name
        );
        // Alone (single path), and as a batch of two copies of itself (batch path).
        check_batch(std::slice::from_ref(item), seed(0, 1), &c.name);
        for i in 0..4 {
            check_batch(&[*item, *item], seed(i, 2), &c.name);
        }
        // Mixed into valid signatures, at varying positions, under many coefficient seeds.
        for (size, seeds) in [(2usize, 24u64), (16, 8), (64, 4)] {
            for i in 0..seeds {
                let pos = (i as usize * 7 + c.name.len()) % size;
                let mut items = fill[..size - 1].to_vec();
                items.insert(pos, *item);
                check_batch(
                    &items,
                    seed(i, size as u8),
                    &format!("{} at {pos} of {size}", c.name),
                );
            }
        }
    }
    // Every crafted case at once, with and without the fillers.
    for i in 0..8 {
        check_batch(&crafted, seed(i, 3), "all crafted");
        let accepted: Vec<_> = crafted
            .iter()
            .zip(&cases)
            .filter(|(_, c)| c.expect.is_ok())
            .map(|(x, _)| *x)
            .collect();
        let mut all = accepted.clone();
        all.extend_from_slice(&fill);
        check_batch(&accepted, seed(i, 4), "all accepted crafted");
        check_batch(&all, seed(i, 5), "all accepted crafted with fillers");
    }
}

fn cluster() -> Arc<Cluster> {
    let manifest = Manifest {
        name: "signatures".into(),
        replicas: (0..4u32)
            .map(|i| ReplicaInfo {
                id: ReplicaId(i),
                public_key: KeyPair::from_seed([i as u8 + 50; 32]).public(),
                address: format!("127.0.0.1:{}", 9000 + i),
            })
            .collect(),
        admin_keys: vec![],
        params: Params::default(),
    };
    Arc::new(Cluster::new(manifest).unwrap())
}

/// A tx from the crafted client, signed over its real tx id.
fn crafted_tx(cid: &Digest, c: &Case, ts: u64) -> SignedTx {
    let mut tx = SignedTx {
        client: c.key,
        ts,
        op: format!("op of {}", c.name).into_bytes(),
        sig: Signature([0; 64]),
    };
    tx.sig = (c.sign)(&tx.id(cid));
    tx
}

#[test]
fn entry_and_tx_paths_agree() {
    let cluster = cluster();
    let cid = *cluster.cluster_id();
    let honest: Vec<SignedTx> = (0..63u64)
        .map(|i| {
            SignedTx::sign(
                &cid,
                &KeyPair::from_seed([(i % 7) as u8 + 1; 32]),
                i + 1,
                vec![i as u8; 8],
            )
        })
        .collect();
    let entry = |txs: Vec<SignedTx>| Entry {
        term: Term(1),
        index: Index(5),
        prev_hash: cid,
        txs,
    };
    let cases = cases();
    let mut accepted = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let tx = crafted_tx(&cid, c, 1_000 + n as u64);
        let mut v = Verifier::new(Arc::clone(&cluster), seed(n as u64, 9));
        // Single path.
        let single = v.verify_tx(tx.clone()).map(|_| ());
        let want = c
            .expect
            .map_err(|source| VerifyError::Signature { what: "tx", source });
        assert_eq!(single, want, "verify_tx: {}", c.name);
        // Entry alone, then mixed into entries of 2, 16 and 64 txs at varying positions.
        let verdict = |r: Result<_, VerifyError>| r.map(|_: raft_bft::verify::CheckedEntry| ());
        let entry_want = |position| {
            c.expect.map_err(|source| VerifyError::EntryTx {
                index: Index(5),
                position,
                source,
            })
        };
        assert_eq!(
            verdict(v.verify_entry(entry(vec![tx.clone()]))),
            entry_want(0),
            "entry of 1: {}",
            c.name
        );
        for size in [2usize, 16, 64] {
            for i in 0..2u64 {
                let pos = (i as usize * 11 + n) % size;
                let mut v = Verifier::new(Arc::clone(&cluster), seed(i, size as u8));
                let mut txs = honest[..size - 1].to_vec();
                txs.insert(pos, tx.clone());
                assert_eq!(
                    verdict(v.verify_entry(entry(txs))),
                    entry_want(pos),
                    "entry of {size} at {pos}: {}",
                    c.name
                );
            }
        }
        if c.expect.is_ok() {
            accepted.push(tx);
        }
    }
    // All accepted crafted txs together in one entry.
    let mut v = Verifier::new(Arc::clone(&cluster), [7; 32]);
    let mut txs = accepted.clone();
    txs.extend_from_slice(&honest);
    assert!(v.verify_entry(entry(accepted)).is_ok());
    assert!(v.verify_entry(entry(txs)).is_ok());
}
