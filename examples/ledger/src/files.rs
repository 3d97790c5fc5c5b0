//! The files a ledger cluster is set up with, in JSON that people can read and edit: the
//! manifest (keys in hex), key files (a hex seed) and each node's configuration.

use std::path::{Path, PathBuf};

use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Manifest, ReplicaInfo};
use raft_bft::types::{PublicKey, ReplicaId};
use serde::{Deserialize, Serialize};

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The contents are not what was expected.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, why: impl ToString) -> FileError {
    FileError::Invalid {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex of exactly `N` bytes.
pub fn unhex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        return Err(format!("expected {} hex digits, found {:?}", 2 * N, text));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("not hex: {text:?}"))?;
    }
    Ok(out)
}

/// A public key from its hex.
pub fn parse_key(text: &str) -> Result<PublicKey, String> {
    unhex::<32>(text).map(PublicKey)
}

/// A key pair with a seed from the operating system's random number generator.
pub fn random_key() -> Result<KeyPair, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no OS randomness: {e}"))?;
    Ok(KeyPair::from_seed(seed))
}

/// Writes a key file (the seed in hex), readable by its owner only.
pub fn write_key(path: &Path, key: &KeyPair) -> Result<(), FileError> {
    std::fs::write(path, hex(&key.seed()) + "\n").map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

/// Reads a key file.
pub fn read_key(path: &Path) -> Result<KeyPair, FileError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    unhex::<32>(&text)
        .map(KeyPair::from_seed)
        .map_err(|why| invalid(path, why))
}

#[derive(Serialize, Deserialize)]
struct ManifestJson {
    name: String,
    replicas: Vec<ReplicaJson>,
    admin_keys: Vec<String>,
    params: Params,
}

#[derive(Serialize, Deserialize)]
struct ReplicaJson {
    id: u32,
    public_key: String,
    address: String,
}

/// Writes a manifest as JSON (keys in hex).
pub fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), FileError> {
    let json = ManifestJson {
        name: manifest.name.clone(),
        replicas: manifest
            .replicas
            .iter()
            .map(|r| ReplicaJson {
                id: r.id.0,
                public_key: hex(&r.public_key.0),
                address: r.address.clone(),
            })
            .collect(),
        admin_keys: manifest.admin_keys.iter().map(|k| hex(&k.0)).collect(),
        params: manifest.params.clone(),
    };
    let text = serde_json::to_string_pretty(&json).map_err(|e| invalid(path, e))?;
    std::fs::write(path, text + "\n").map_err(io(path))
}

/// Reads a manifest written by [`write_manifest`] (or by hand).
pub fn read_manifest(path: &Path) -> Result<Manifest, FileError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let json: ManifestJson = serde_json::from_str(&text).map_err(|e| invalid(path, e))?;
    let replicas = json
        .replicas
        .into_iter()
        .map(|r| {
            Ok(ReplicaInfo {
                id: ReplicaId(r.id),
                public_key: parse_key(&r.public_key).map_err(|why| invalid(path, why))?,
                address: r.address,
            })
        })
        .collect::<Result<_, FileError>>()?;
    let admin_keys = json
        .admin_keys
        .iter()
        .map(|k| parse_key(k).map_err(|why| invalid(path, why)))
        .collect::<Result<_, _>>()?;
    Ok(Manifest {
        name: json.name,
        replicas,
        admin_keys,
        params: json.params,
    })
}

/// One node's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeFile {
    /// The cluster's manifest.
    pub manifest: PathBuf,
    /// This replica's id.
    pub id: u32,
    /// This replica's key file.
    pub key: PathBuf,
    /// Its data directory.
    pub data: PathBuf,
    /// The address to bind, when it differs from the manifest's (`0.0.0.0:7000` behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// Writes a node configuration.
pub fn write_node(path: &Path, node: &NodeFile) -> Result<(), FileError> {
    let text = serde_json::to_string_pretty(node).map_err(|e| invalid(path, e))?;
    std::fs::write(path, text + "\n").map_err(io(path))
}

/// Reads a node configuration; relative paths in it are relative to its own directory.
pub fn read_node(path: &Path) -> Result<NodeFile, FileError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut node: NodeFile = serde_json::from_str(&text).map_err(|e| invalid(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut node.manifest, &mut node.key, &mut node.data] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(node)
}

/// What `cluster init` writes into `dir` for `n` replicas on `hosts` (one for all, or one per
/// replica), ports from `base_port`
/// (0: free ports chosen now): the manifest, one key and one node file per replica, and the
/// admin key. Returns the manifest.
pub fn init_cluster(
    dir: &Path,
    n: usize,
    hosts: &[String],
    base_port: u16,
    params: Params,
) -> Result<Manifest, FileError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let admin = random_key().map_err(|why| invalid(dir, why))?;
    let mut replicas = Vec::new();
    if hosts.len() != 1 && hosts.len() != n {
        return Err(invalid(
            dir,
            format!(
                "{} hosts for {n} replicas: give one, or one per replica",
                hosts.len()
            ),
        ));
    }
    for i in 0..n {
        let host = hosts.get(i).unwrap_or(&hosts[0]).as_str();
        let key = random_key().map_err(|why| invalid(dir, why))?;
        let port = if base_port == 0 {
            std::net::UdpSocket::bind((host, 0))
                .and_then(|s| s.local_addr())
                .map_err(io(dir))?
                .port()
        } else {
            base_port + i as u16
        };
        write_key(&dir.join(format!("replica-{i}.key")), &key)?;
        write_node(
            &dir.join(format!("node-{i}.json")),
            &NodeFile {
                manifest: PathBuf::from("manifest.json"),
                id: i as u32,
                key: PathBuf::from(format!("replica-{i}.key")),
                data: PathBuf::from(format!("data-{i}")),
                listen: None,
            },
        )?;
        replicas.push((key.public(), format!("{host}:{port}")));
    }
    write_key(&dir.join("admin.key"), &admin)?;
    let mut manifest = Manifest::new(
        format!("ledger-{}", hex(&admin.public().0[..4])),
        replicas,
        params,
    );
    manifest.admin_keys = vec![admin.public()];
    write_manifest(&dir.join("manifest.json"), &manifest)?;
    Ok(manifest)
}
