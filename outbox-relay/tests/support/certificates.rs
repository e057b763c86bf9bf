//! A certificate authority, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate (for mutual TLS), made with the
//! `openssl` command for a test's TLS servers.

use std::path::{Path, PathBuf};
use std::process::Command;

/// PEM files in a directory of their own: `ca.pem`, `server.pem`,
/// `server.key`, `client.pem`, `client.key`.
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    /// Makes a new CA and a server and a client certificate it signed,
    /// valid two days.
    pub fn generate(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-tls-{name}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=outbox test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        let leaves = [
            (
                "server",
                "/CN=localhost",
                "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n",
            ),
            (
                "client",
                "/CN=outbox-relay",
                "extendedKeyUsage = clientAuth\n",
            ),
        ];
        for (leaf, subject, usage) in leaves {
            let extensions = format!(
                "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n{usage}"
            );
            std::fs::write(dir.join(format!("{leaf}.ext")), extensions).unwrap();
            let (key, csr) = (format!("{leaf}.key"), format!("{leaf}.csr"));
            let (ext, pem) = (format!("{leaf}.ext"), format!("{leaf}.pem"));
            openssl(
                &dir,
                &[
                    "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key,
                    "-out", &csr,
                ],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                    "-out",
                    &pem,
                ],
            );
        }
        Certificates { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn certificate(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The client certificate, for mutual TLS.
    pub fn client_certificate(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// Copies the server's certificate and key into `dir`, the key readable
    /// by its owner only (PostgreSQL insists).
    pub fn install(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (certificate, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::copy(self.certificate(), &certificate).unwrap();
        std::fs::copy(self.key(), &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (certificate, key)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Runs the `openssl` command in `dir`; a failure fails the test with its
/// output.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
