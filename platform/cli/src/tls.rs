//! `fractal up --tls`: a private certificate authority for one local run, and a certificate
//! signed by it for every hub node (server and cluster routes) and every client (each service,
//! each bridge, and the operator's tools). Servers require and verify client certificates
//! (mutual TLS); clients verify the servers against the same authority. Keys are written
//! readable by their owner only.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The certificates of a run, in one folder.
#[derive(Debug, Clone)]
pub(crate) struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// A new authority in `dir` and a certificate for each of `names`, valid for `localhost`
    /// and `127.0.0.1`. Whatever the folder held before is replaced.
    pub(crate) fn create(dir: &Path, names: &[String]) -> anyhow::Result<Certificates> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let certificates = Certificates {
            dir: dir.to_path_buf(),
        };
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Fractal local authority");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let authority = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        write(&certificates.ca(), &authority.pem(), false)?;
        for name in names {
            let key = KeyPair::generate()?;
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
            params
                .distinguished_name
                .push(DnType::CommonName, name.as_str());
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let certificate = params.signed_by(&key, &authority)?;
            write(&certificates.cert(name), &certificate.pem(), false)?;
            write(&certificates.key(name), &key.serialize_pem(), true)?;
        }
        Ok(certificates)
    }

    /// The certificates a run made in `dir`.
    pub(crate) fn at(dir: &Path) -> Certificates {
        Certificates {
            dir: dir.to_path_buf(),
        }
    }

    /// The authority's certificate.
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate of `name`.
    pub(crate) fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.pem", file_name(name)))
    }

    /// The private key of `name`.
    pub(crate) fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}-key.pem", file_name(name)))
    }

    /// The TLS settings of client `name`.
    pub(crate) fn client(&self, name: &str) -> fractal::hub::TlsConfig {
        fractal::hub::TlsConfig {
            required: true,
            ca_file: Some(self.ca()),
            cert_file: Some(self.cert(name)),
            key_file: Some(self.key(name)),
        }
    }
}

fn file_name(name: &str) -> String {
    name.replace('/', "-")
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
