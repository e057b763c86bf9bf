//! Servers of a test's own, on spare ports, that it may restart or start
//! with TLS: a nats-server with JetStream on a file store, a PostgreSQL
//! cluster, a MariaDB server, a RabbitMQ node and a Kafka-protocol broker,
//! plain or over TLS only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_testkit::eventually;

use super::certificates::Certificates;
use super::spare_port;

async fn wait_for_port(port: u16, what: &str) {
    assert!(port_opens(port).await, "{what} did not start on {port}");
}

/// Whether a listener answers on `port` within two minutes.
async fn port_opens(port: u16) -> bool {
    eventually(Duration::from_secs(120), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

/// A nats-server with JetStream whose store survives its restarts.
pub struct OwnNats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Certificate and key when it requires TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// The CA whose client certificates it requires (mutual TLS).
    client_ca: Option<PathBuf>,
    /// The token clients must present, if any.
    token: Option<String>,
}

impl OwnNats {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that requires TLS, with the certificate `certificates`'
    /// CA signed.
    pub async fn start_tls(certificates: &Certificates) -> Self {
        Self::start_with(Some(certificates)).await
    }

    /// A server that requires TLS and a client certificate `certificates`'
    /// CA signed.
    pub async fn start_mtls(certificates: &Certificates) -> Self {
        Self::start_at_with(spare_port(), Some(certificates), None, true).await
    }

    /// A server that lets in only clients presenting `token`.
    pub async fn start_with_token(token: &str) -> Self {
        Self::start_as(None, Some(token.to_string())).await
    }

    async fn start_with(certificates: Option<&Certificates>) -> Self {
        Self::start_as(certificates, None).await
    }

    async fn start_as(certificates: Option<&Certificates>, token: Option<String>) -> Self {
        Self::start_at(spare_port(), certificates, token).await
    }

    async fn start_at(
        port: u16,
        certificates: Option<&Certificates>,
        token: Option<String>,
    ) -> Self {
        Self::start_at_with(port, certificates, token, false).await
    }

    async fn start_at_with(
        port: u16,
        certificates: Option<&Certificates>,
        token: Option<String>,
        verify_clients: bool,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-own-nats-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = certificates.map(|c| c.install(&dir));
        let client_ca = certificates.filter(|_| verify_clients).map(|c| {
            let ca = dir.join("ca.pem");
            std::fs::copy(c.ca(), &ca).unwrap();
            ca
        });
        let mut server = OwnNats {
            port,
            dir,
            child: None,
            tls,
            client_ca,
            token,
        };
        server.spawn();
        wait_for_port(port, "own nats-server").await;
        server
    }

    fn spawn(&mut self) {
        let bin = outbox_testkit::nats_server_bin();
        let mut command = Command::new(&bin);
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.join("store"));
        if let Some(token) = &self.token {
            command.arg("--auth").arg(token);
        }
        if let Some((certificate, key)) = &self.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(certificate)
                .arg("--tlskey")
                .arg(key);
        }
        if let Some(ca) = &self.client_ca {
            command.arg("--tlsverify").arg("--tlscacert").arg(ca);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {bin} (run scripts/services.sh up, or set OUTBOX_NATS_SERVER_BIN): {err}"));
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM: JetStream writes its store out), keeps
    /// it down for `down`, starts it again and waits until it answers.
    pub async fn restart(&mut self, down: Duration) {
        self.stop();
        tokio::time::sleep(down).await;
        self.spawn();
        wait_for_port(self.port, "own nats-server").await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            child.wait().ok();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A PostgreSQL cluster in a temporary directory. Built with the `initdb`
/// and `pg_ctl` on PATH, or else Debian's under /usr/lib/postgresql; run as
/// the `postgres` user when the test runs as root (PostgreSQL refuses root).
pub struct OwnPostgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Server options beyond the socket, address and port.
    options: String,
}

impl OwnPostgres {
    pub async fn start() -> Self {
        Self::start_with(None, "").await
    }

    /// A cluster with `wal_level = logical`, for the WAL outbox.
    pub async fn start_logical() -> Self {
        Self::start_with(None, " -c wal_level=logical").await
    }

    /// A cluster that takes TCP connections over TLS only (`hostssl` in
    /// `pg_hba.conf`), with the certificate `certificates`' CA signed.
    pub async fn start_tls(certificates: &Certificates) -> Self {
        Self::start_with(Some(certificates), "").await
    }

    /// A cluster with `wal_level = logical` that keeps at most `megabytes`
    /// of log for a slot behind (`max_slot_wal_keep_size`): past it, a
    /// checkpoint invalidates the slot.
    pub async fn start_logical_keeping(megabytes: u32) -> Self {
        let extra = format!(" -c wal_level=logical -c max_slot_wal_keep_size={megabytes}MB");
        Self::start_with(None, &extra).await
    }

    /// A cluster with `wal_level = logical` whose commits wait for a
    /// synchronous standby named `nobody`, which never comes, in sessions
    /// that ask for it (`SET synchronous_commit = on`; the cluster's
    /// default is `local`): such a commit is in the log, flushed, and not
    /// yet visible to other sessions until its wait is cancelled.
    pub async fn start_logical_waiting_for_a_standby() -> Self {
        let extra = " -c wal_level=logical -c synchronous_standby_names=nobody \
                     -c synchronous_commit=local";
        Self::start_with(None, extra).await
    }

    /// A server with `wal_level = logical` that takes connections over
    /// TLS only, replication connections included.
    pub async fn start_logical_tls(certificates: &Certificates) -> Self {
        Self::start_with(Some(certificates), " -c wal_level=logical").await
    }

    async fn start_with(certificates: Option<&Certificates>, extra: &str) -> Self {
        let port = spare_port();
        let dir = std::env::temp_dir().join(format!("outbox-own-pg-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let options = match certificates {
            Some(certificates) => {
                let (certificate, key) = certificates.install(&dir);
                format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    certificate.display(),
                    key.display()
                )
            }
            None => String::new(),
        } + extra;
        let server = OwnPostgres {
            port,
            dir,
            bin: postgres_bin(),
            options,
        };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&server.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", server.dir.display());
        }
        server.run(&format!(
            "{} -D {} -A trust -U postgres",
            server.bin.join("initdb").display(),
            server.data().display()
        ));
        if certificates.is_some() {
            server.run(&format!(
                "printf 'local all all trust\\nhostssl all all 127.0.0.1/32 trust\\n\
                 hostssl replication all 127.0.0.1/32 trust\\n' > {}",
                server.data().join("pg_hba.conf").display()
            ));
        }
        server.pg_ctl("start");
        wait_for_port(port, "own PostgreSQL").await;
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// An immediate restart, as after a crash: every connection ends and
    /// the server recovers from its write-ahead log.
    pub async fn restart(&self) {
        self.pg_ctl("restart -m immediate");
        wait_for_port(self.port, "own PostgreSQL").await;
    }

    fn pg_ctl(&self, action: &str) {
        self.run(&self.pg_ctl_command(action));
    }

    fn pg_ctl_command(&self, action: &str) -> String {
        format!(
            "{} -D {} -l {} -w -o '-k {} -c listen_addresses=127.0.0.1 -p {}{}' {action}",
            self.bin.join("pg_ctl").display(),
            self.data().display(),
            self.dir.join("log").display(),
            self.dir.display(),
            self.port,
            self.options
        )
    }

    fn run(&self, command: &str) {
        let output = shell(command).unwrap();
        assert!(
            output.status.success(),
            "{command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // Never a panic here: this may run while a test is failing.
        let _ = shell(&self.pg_ctl_command("stop -m immediate"));
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Runs `command` as the `postgres` user when root, else as oneself.
fn shell(command: &str) -> std::io::Result<std::process::Output> {
    if is_root() {
        Command::new("su")
            .args(["postgres", "-c", command])
            .output()
    } else {
        Command::new("sh").args(["-c", command]).output()
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// Where `initdb` is: on PATH, or in Debian's versioned directory.
fn postgres_bin() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(initdb) = on_path {
        return Path::new(&initdb).parent().unwrap().to_path_buf();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|bin| bin.join("initdb").exists())
        .expect("initdb: not on PATH nor under /usr/lib/postgresql/*/bin")
}

/// A MariaDB server in a temporary directory (`mariadb-install-db`, then
/// `mariadbd`), root with an empty password over TCP. Restarted with
/// `kill -9`, as after a crash: InnoDB recovers from its log.
pub struct OwnMariadb {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Server options beyond the port, directories and address.
    options: Vec<String>,
    /// What a client adds to the URL to connect: the TLS settings when the
    /// server requires TLS.
    query: String,
}

impl OwnMariadb {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that refuses connections without TLS
    /// (`require_secure_transport`), with the certificate `certificates`'
    /// CA signed.
    pub async fn start_tls(certificates: &Certificates) -> Self {
        Self::start_with(Some(certificates)).await
    }

    async fn start_with(certificates: Option<&Certificates>) -> Self {
        let port = spare_port();
        let dir = std::env::temp_dir().join(format!("outbox-own-mariadb-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let output = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .output()
            .expect("mariadb-install-db (Debian's mariadb-server)");
        assert!(
            output.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (options, query) = match certificates {
            Some(certificates) => {
                let (certificate, key) = certificates.install(&dir);
                (
                    vec![
                        format!("--ssl-cert={}", certificate.display()),
                        format!("--ssl-key={}", key.display()),
                        "--require-secure-transport=ON".to_string(),
                    ],
                    format!(
                        "?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
                        certificates.ca().display()
                    ),
                )
            }
            None => (Vec::new(), String::new()),
        };
        let mut server = OwnMariadb {
            port,
            dir,
            child: None,
            options,
            query,
        };
        server.spawn();
        wait_for_port(port, "own MariaDB").await;
        server
    }

    fn spawn(&mut self) {
        let bin = if Path::new("/usr/sbin/mariadbd").exists() {
            "/usr/sbin/mariadbd"
        } else {
            "mariadbd"
        };
        let child = Command::new(bin)
            .args(["--no-defaults", "--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        self.child = Some(child);
    }

    /// The server's URL without TLS settings, for a test that checks a
    /// plain connection is refused.
    pub fn plain_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// The server's URL, on its `test` database (created if missing), with
    /// the TLS settings when the server requires TLS.
    pub async fn url(&self) -> String {
        let root = format!("{}{}", self.plain_url(), self.query);
        let pool = sqlx::MySqlPool::connect(&root).await.expect("own MariaDB");
        sqlx::query("CREATE DATABASE IF NOT EXISTS test")
            .execute(&pool)
            .await
            .unwrap();
        format!("{}/test{}", self.plain_url(), self.query)
    }

    /// `kill -9`, then starts again and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        wait_for_port(self.port, "own MariaDB").await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A RabbitMQ node of the harness's own (Debian's `rabbitmq-server`), on a
/// spare port. A restart stops and starts the RabbitMQ application on the
/// node (`rabbitmqctl stop_app`, `start_app`): every connection ends and
/// the durable queues come back from disk.
pub struct OwnRabbit {
    port: u16,
    dir: PathBuf,
    node: String,
    child: Option<Child>,
}

impl OwnRabbit {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A node that takes AMQP over TLS only (`amqps://`), with the
    /// certificate `certificates`' CA signed.
    pub async fn start_tls(certificates: &Certificates) -> Self {
        Self::start_with(Some(certificates)).await
    }

    /// The same, requiring a client certificate the CA signed (mutual TLS).
    pub async fn start_mtls(certificates: &Certificates) -> Self {
        Self::start_verifying(Some(certificates), true).await
    }

    async fn start_with(certificates: Option<&Certificates>) -> Self {
        Self::start_verifying(certificates, false).await
    }

    async fn start_verifying(certificates: Option<&Certificates>, verify_clients: bool) -> Self {
        let port = spare_port();
        let dir = std::env::temp_dir().join(format!("outbox-chaos-rabbit-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins.conf"), "[].\n").unwrap();
        // Our own config: the system's rabbitmq.conf pins the listener.
        let listeners = match certificates {
            None => format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
            Some(certificates) => {
                let (certificate, key) = certificates.install(&dir);
                std::fs::copy(certificates.ca(), dir.join("ca.pem")).unwrap();
                format!(
                    "listeners.tcp = none\n\
                     listeners.ssl.local = 127.0.0.1:{port}\n\
                     ssl_options.cacertfile = {}\n\
                     ssl_options.certfile = {}\n\
                     ssl_options.keyfile = {}\n\
                     ssl_options.verify = {}\n\
                     ssl_options.fail_if_no_peer_cert = {verify_clients}\n",
                    dir.join("ca.pem").display(),
                    certificate.display(),
                    key.display(),
                    if verify_clients {
                        "verify_peer"
                    } else {
                        "verify_none"
                    },
                )
            }
        };
        std::fs::write(dir.join("rabbitmq.conf"), listeners).unwrap();
        // Debian's wrapper runs the server as the rabbitmq user.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq"])
            .arg(&dir)
            .status();
        let node = format!("outboxchaos{port}@localhost");
        let mut server = Command::new("rabbitmq-server");
        if certificates.is_none() {
            server
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", port.to_string());
        }
        let child = server
            .env("RABBITMQ_NODENAME", &node)
            .env(
                "RABBITMQ_DIST_PORT",
                (u32::from(port) % 20000 + 30000).to_string(),
            )
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.join("enabled_plugins.conf"),
            )
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server (Debian's rabbitmq-server)");
        let server = OwnRabbit {
            port,
            dir,
            node,
            child: Some(child),
        };
        // The listener opens once the node has booted (tens of seconds on
        // a loaded machine).
        assert!(
            port_opens(port).await,
            "own RabbitMQ did not start on {port}; its log ends:\n{}",
            server.log_tail()
        );
        server
    }

    /// The last lines of the node's logs: what a failing test shows of why
    /// the node did not start or turned a client away.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        for entry in std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
        {
            let path = entry.map(|e| e.path()).unwrap_or_default();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail.push_str(&format!("--- {}\n", path.display()));
            for line in &lines[lines.len().saturating_sub(30)..] {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        tail
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The URL of a node started with [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the RabbitMQ application, starts it again, waits until it
    /// answers.
    pub async fn restart(&self) {
        self.ctl(&["stop_app"]);
        self.ctl(&["start_app"]);
        wait_for_port(self.port, "own RabbitMQ").await;
    }

    /// `rabbitmqctl list_queues name messages`, as it printed it: what a
    /// failing test shows of the node's queues.
    pub fn list_queues(&self) -> String {
        Command::new("rabbitmqctl")
            .args([
                "-n",
                &self.node,
                "list_queues",
                "name",
                "messages",
                "consumers",
            ])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|err| format!("rabbitmqctl: {err}"))
    }

    /// Closes every client connection to the node.
    pub fn close_connections(&self) {
        self.ctl(&["close_all_connections", "closed by the test"]);
    }

    fn ctl(&self, args: &[&str]) {
        let output = Command::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdin(Stdio::null())
            .output();
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// tansu (`OUTBOX_TANSU_BIN`) with memory storage, listening on `port` and
/// telling clients to connect to `advertised`.
fn spawn_tansu(port: u16, advertised: u16) -> Child {
    let bin = outbox_testkit::tansu_bin();
    Command::new(&bin)
        .arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot run {bin} (run scripts/services.sh up, or set OUTBOX_TANSU_BIN): {err}")
        })
}

/// A Kafka-protocol broker of the test's own (tansu, memory storage: a
/// restart comes back with no topic and an empty log).
pub struct OwnKafka {
    port: u16,
    child: Child,
}

impl OwnKafka {
    pub async fn start() -> Self {
        let port = spare_port();
        let server = OwnKafka {
            port,
            child: spawn_tansu(port, port),
        };
        wait_for_port(port, "own tansu").await;
        server
    }

    /// `bootstrap.servers` for a client.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker and starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        self.child = spawn_tansu(self.port, self.port);
        wait_for_port(self.port, "own tansu").await;
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A Kafka-protocol broker of the test's own (tansu, memory storage) that
/// clients reach over TLS only: tansu listens on a plain port nobody is
/// told of and advertises the port of a TLS-terminating `socat` in front
/// of it, so every connection a client makes, the bootstrap one and those
/// to the advertised broker, is encrypted. tansu 0.6.0's own `--cert`
/// option still serves plain text.
pub struct OwnKafkaTls {
    port: u16,
    broker: Child,
    proxy: Child,
}

impl OwnKafkaTls {
    pub async fn start(certificates: &Certificates) -> Self {
        let (plain, port) = (spare_port(), spare_port());
        let broker = spawn_tansu(plain, port);
        let proxy = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                certificates.certificate().display(),
                certificates.key().display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run socat (scripts/services.sh deps): {err}"));
        let server = OwnKafkaTls {
            port,
            broker,
            proxy,
        };
        wait_for_port(plain, "own tansu").await;
        wait_for_port(port, "socat in front of own tansu").await;
        server
    }

    /// `bootstrap.servers` for a client: the TLS port.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnKafkaTls {
    fn drop(&mut self) {
        for child in [&mut self.proxy, &mut self.broker] {
            child.kill().ok();
            child.wait().ok();
        }
    }
}
