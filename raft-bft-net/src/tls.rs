//! TLS for QUIC, bound to the manifest's keys.
//!
//! A replica's TLS certificate is self-signed with its protocol key (ed25519), so the key in the
//! manifest is the only thing anyone needs to trust: a replica dialling a peer pins that peer's
//! manifest key, and a replica accepts a client certificate only if its key is a member's.
//! Clients present no certificate (they are untrusted; their txs carry their own signatures) and
//! pin the key of the replica they dial. Certificate names, chains and validity dates are not
//! used: the key binding replaces them.
//!
//! Transport security is defence in depth. Safety rests on the protocol's signatures; TLS keeps
//! strangers off the replica links and tells a replica which peer sent a message.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Cluster;
use raft_bft::types::{PublicKey, ReplicaId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::NetError;
use crate::limits::Limits;

/// ALPN of replica-to-replica connections (mutually authenticated).
pub const ALPN_REPLICA: &[u8] = b"raft-bft/1/replica";
/// ALPN of client connections (only the replica is authenticated).
pub const ALPN_CLIENT: &[u8] = b"raft-bft/1/client";
/// The server name clients send; certificates are checked by key, not by name.
pub(crate) const SERVER_NAME: &str = "raft-bft";

/// The algorithm identifier of ed25519 keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// A certificate and its private key, derived from a replica's protocol key.
#[derive(Debug)]
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// A self-signed certificate for `key`.
    pub fn new(key: &KeyPair) -> Result<Self, NetError> {
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8_v1(&key.seed()));
        let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| NetError::Tls(format!("cannot load the replica key for TLS: {e}")))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|e| NetError::Tls(format!("certificate parameters: {e}")))?;
        let cert = params
            .self_signed(&signer)
            .map_err(|e| NetError::Tls(format!("cannot sign the certificate: {e}")))?;
        Ok(TlsIdentity {
            cert: cert.der().clone(),
            key: pkcs8,
        })
    }
}

/// The PKCS#8 v1 encoding of an ed25519 private key (RFC 8410, section 7).
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// The ed25519 key a certificate carries (whatever else it says).
pub(crate) fn ed25519_key_of(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    let bad = |why: &str| rustls::Error::General(format!("peer certificate: {why}"));
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| bad("does not parse as X.509"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let spki = parsed.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
        return Err(bad("not an ed25519 key"));
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| bad("ed25519 key of the wrong length"))?;
    Ok(PublicKey(bytes))
}

/// The key a connection's peer authenticated with, if it presented a certificate.
pub(crate) fn peer_key(conn: &quinn::Connection) -> Option<PublicKey> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(|c| ed25519_key_of(c).ok())
}

/// The ALPN a connection agreed on.
pub(crate) fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    data.protocol
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verify_tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// Accepts exactly one server key.
#[derive(Debug)]
struct PinnedServerKey {
    expected: PublicKey,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if ed25519_key_of(end_entity)? == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's key is not the one the manifest lists for this replica".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Accepts a client certificate only if its key is a member's; clients without one are let
/// through to the client protocol (the connection's ALPN then decides what they may do).
#[derive(Debug)]
struct MemberClientKeys {
    members: Vec<PublicKey>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for MemberClientKeys {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = ed25519_key_of(end_entity)?;
        if self.members.contains(&key) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the peer's key is not in the manifest".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// QUIC transport settings shared by both ends.
pub(crate) fn transport(limits: &Limits, streams: u32) -> Result<quinn::TransportConfig, NetError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| NetError::Config("idle_timeout is too large".into()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(limits.idle_timeout / 3));
    // Replicas usually sit in one region; a smaller first RTT guess makes the first
    // retransmission of a handshake (to a peer that was not listening yet) come sooner.
    t.initial_rtt(Duration::from_millis(100));
    t.max_concurrent_uni_streams(streams.into());
    t.max_concurrent_bidi_streams(streams.into());
    // Bound what a peer can make us buffer: per stream, per connection, and no datagrams
    // (unused). Frames larger than a window still pass, as the reader consumes them.
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window((2 * STREAM_WINDOW).into());
    t.send_window(4 * u64::from(STREAM_WINDOW));
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

/// The server side of a replica's endpoint: its certificate, both ALPNs, member client keys.
pub fn server_config(
    cluster: &Cluster,
    identity: &TlsIdentity,
    limits: &Limits,
) -> Result<quinn::ServerConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(MemberClientKeys {
        members: cluster
            .manifest()
            .replicas
            .iter()
            .map(|r| r.public_key)
            .collect(),
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![identity.cert.clone()],
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN_REPLICA.to_vec(), ALPN_CLIENT.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // A replica link carries one unidirectional stream, a client connection one bidirectional
    // stream (the other kind is closed once the ALPN says which it is).
    config.transport_config(Arc::new(transport(limits, 1)?));
    config.max_incoming(limits.max_handshakes);
    Ok(config)
}

/// The client side of a connection to replica `peer` whose key is `expected`; with `identity`,
/// the connection authenticates as a replica, without it as a client.
pub fn client_config(
    expected: PublicKey,
    identity: Option<&TlsIdentity>,
    limits: &Limits,
) -> Result<quinn::ClientConfig, NetError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerKey {
        expected,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let (mut tls, alpn) = match identity {
        Some(id) => (
            builder
                .with_client_auth_cert(
                    vec![id.cert.clone()],
                    PrivateKeyDer::Pkcs8(id.key.clone_key()),
                )
                .map_err(|e| NetError::Tls(e.to_string()))?,
            ALPN_REPLICA,
        ),
        None => (builder.with_no_client_auth(), ALPN_CLIENT),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // The server opens no streams towards us.
    config.transport_config(Arc::new(transport(limits, 0)?));
    Ok(config)
}

/// A replica's endpoint on `socket`: it serves with `server` and dials its peers from the same
/// socket.
///
/// Its stateless-reset key (and connection-id key) is derived from the replica's secret key, so
/// that it survives a restart: a peer that still sends on a connection to the previous process gets a valid
/// stateless reset at its first packet and reconnects at once, instead of waiting for the idle
/// timeout while everything it sends is lost.
pub fn endpoint(
    key: &KeyPair,
    server: quinn::ServerConfig,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, NetError> {
    let secret = blake3::derive_key("raft-bft v1 QUIC stateless reset key", &key.seed());
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // The endpoint answers only packets whose connection id it could have issued; the ids'
    // key must survive the restart too, or packets for the old connections are dropped
    // without a reset.
    let cid_secret = blake3::derive_key("raft-bft v1 QUIC connection id key", &key.seed());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    quinn::Endpoint::new(
        config,
        Some(server),
        socket,
        Arc::new(quinn::AsyncStdRuntime),
    )
    .map_err(|source| NetError::Bind { addr, source })
}

/// The member whose key a replica connection authenticated with.
pub(crate) fn member_of(cluster: &Cluster, key: &PublicKey) -> Option<ReplicaId> {
    cluster
        .manifest()
        .replicas
        .iter()
        .find(|r| r.public_key == *key)
        .map(|r| r.id)
}

/// Bytes a peer may send on one stream ahead of what the reader consumed.
const STREAM_WINDOW: u32 = 1 << 20;

/// How long a handshake may take before the connection is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a first dial waits for the handshake before trying again (a peer that is not
/// listening yet answers no packet; a fresh attempt reaches it as soon as it is). Each failed
/// attempt doubles it, up to [`HANDSHAKE_TIMEOUT`], so that a slow path still connects.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_replica_key() {
        let key = KeyPair::from_seed([3; 32]);
        let id = TlsIdentity::new(&key).unwrap();
        assert_eq!(ed25519_key_of(&id.cert).unwrap(), key.public());
    }

    #[test]
    fn garbage_certificates_are_refused_without_panic() {
        for bytes in [
            vec![],
            vec![0x30],
            vec![0xff; 64],
            vec![0x30, 0x82, 0xff, 0xff],
        ] {
            assert!(ed25519_key_of(&CertificateDer::from(bytes)).is_err());
        }
    }
}
