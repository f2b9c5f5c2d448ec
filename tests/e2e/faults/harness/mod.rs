//! What the fault tests and the soak are made of: Apache Kafka nodes, a Redis and the
//! pipeline's roles as real processes that can be killed and restarted; a load of unary
//! `CreateOrder` calls that records every `accepted` answer; a reader that remembers the
//! first result it saw of each order; and the final account of a run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod load;

pub use load::{Account, Load, Reader, settle};

/// A test's directory of logs and data: removed at the end, or kept (and its path
/// printed) when FAULTS_KEEP is set.
pub enum RunDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl RunDir {
    pub fn path(&self) -> &Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(path) => path,
        }
    }
}

/// A new [`RunDir`].
pub fn run_dir() -> RunDir {
    let dir = tempfile::Builder::new()
        .prefix("order-pipeline-fault.")
        .tempdir()
        .expect("a temp dir");
    if std::env::var_os("FAULTS_KEEP").is_some() {
        let path = dir.keep();
        println!("logs and data in {}", path.display());
        RunDir::Kept(path)
    } else {
        RunDir::Temp(dir)
    }
}

pub use crate::support::free_port;

/// Waits until `addr` accepts TCP connections; panics after `limit`.
pub fn wait_port(addr: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `child` and waits for it to exit (SIGKILL after 60 s).
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How a process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: a graceful shutdown.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

/// A process started from a fixed command line that can be stopped and started again,
/// killed when dropped.
pub struct Proc {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// A process running `command` with `env`, its output appended to `log`.
    pub fn new(name: &str, command: Vec<String>, env: Vec<(String, String)>, log: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            command,
            env,
            log,
            child: None,
        }
    }

    /// Starts it (again).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the process log");
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// Stops it with `how`; a no-op when it is not running.
    pub fn stop(&mut self, how: Stop) {
        if let Some(mut child) = self.child.take() {
            match how {
                Stop::Term => terminate(&mut child),
                Stop::Kill => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Panics with its log's tail when it has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Stop::Kill);
    }
}

/// Apache Kafka: one node, or a cluster whose topics have 3 replicas and
/// `min.insync.replicas=2` (scripts/kafka.sh).
pub struct Kafka {
    /// Each node, by index; node i has `node.id` i + 1.
    pub nodes: Vec<Proc>,
    /// Each node's bootstrap address.
    pub addrs: Vec<String>,
    /// Each node's directory (its data, and `broker.log`).
    dirs: Vec<PathBuf>,
}

impl Kafka {
    /// Starts `count` nodes in `dir` and waits until each listens.
    pub fn start(dir: &Path, count: usize) -> Self {
        let script = std::env::var_os("TEST_KAFKA_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::support::repo_root().join("scripts/kafka.sh"));
        let script = script.to_string_lossy().into_owned();
        let cluster_id = Command::new(&script)
            .arg("cluster-id")
            .output()
            .expect("scripts/kafka.sh cluster-id");
        assert!(cluster_id.status.success(), "{cluster_id:?}");
        let cluster_id = String::from_utf8_lossy(&cluster_id.stdout)
            .trim()
            .to_string();
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, ctrl))| format!("{}@127.0.0.1:{ctrl}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        let mut dirs = Vec::new();
        for (i, (port, _)) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("kafka-{}", i + 1));
            dirs.push(node_dir.clone());
            let mut node = Proc::new(
                &format!("kafka node {}", i + 1),
                vec![
                    script.clone(),
                    "node".into(),
                    node_dir.to_string_lossy().into_owned(),
                    (i + 1).to_string(),
                    port.to_string(),
                    voters.clone(),
                    cluster_id.clone(),
                ],
                Vec::new(),
                dir.join(format!("kafka-{}.out", i + 1)),
            );
            node.start();
            nodes.push(node);
            addrs.push(format!("127.0.0.1:{port}"));
        }
        let mut kafka = Self { nodes, addrs, dirs };
        for index in 0..count {
            kafka.wait_listening(index);
        }
        kafka
    }

    /// Waits until node `index` listens; panics with the tails of its output and of its
    /// `broker.log` when it exits first or does not listen within 120 s.
    fn wait_listening(&mut self, index: usize) {
        let limit = Duration::from_secs(120);
        let deadline = Instant::now() + limit;
        let addr = &self.addrs[index];
        let node = &mut self.nodes[index];
        while std::net::TcpStream::connect(addr).is_err() {
            let exited = node
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            let problem = match exited {
                Some(status) => format!("exited ({status}) before it listened on {addr}"),
                None if Instant::now() > deadline => {
                    format!("did not listen on {addr} within {limit:?}")
                }
                None => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let broker_log =
                std::fs::read_to_string(self.dirs[index].join("broker.log")).unwrap_or_default();
            let lines: Vec<&str> = broker_log.lines().collect();
            panic!(
                "Apache Kafka ({}) {problem}\n--- its output:\n{}\n--- broker.log:\n{}",
                node.name,
                node.log_tail(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }

    /// Every node's address, as KAFKA_BROKERS.
    pub fn bootstrap(&self) -> String {
        self.addrs.join(",")
    }

    /// Starts node `index` again with its data and waits until it listens.
    pub fn restart(&mut self, index: usize) {
        let started = Instant::now();
        self.nodes[index].start();
        self.wait_listening(index);
        println!(
            "{} listens again after {:.1} s",
            self.nodes[index].name,
            started.elapsed().as_secs_f64()
        );
    }

    /// The index of the node that leads `partition` of `topic`.
    pub fn leader_of(&self, topic: &str, partition: i32) -> usize {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("a metadata client");
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .expect("the topic's metadata");
        let leader = metadata.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .expect("the partition exists");
        usize::try_from(leader - 1).expect("node ids start at 1")
    }
}

/// A Redis with the durability the README documents for results: an append-only file
/// fsynced on every write (`appendfsync always`).
pub struct Redis {
    /// The server.
    pub proc: Proc,
    /// Its address.
    pub addr: String,
}

impl Redis {
    /// Starts it in `dir` and waits until it listens.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let data = dir.join("redis");
        std::fs::create_dir_all(&data).expect("redis dir");
        let mut proc = Proc::new(
            "redis-server",
            [
                "redis-server",
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &data.to_string_lossy(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]
            .iter()
            .map(ToString::to_string)
            .collect(),
            Vec::new(),
            dir.join("redis.out"),
        );
        proc.start();
        let addr = format!("127.0.0.1:{port}");
        wait_port(&addr, Duration::from_secs(30), "redis-server");
        Self { proc, addr }
    }

    /// Starts it again with its data and waits until it listens.
    pub fn restart(&mut self) {
        self.proc.start();
        wait_port(&self.addr, Duration::from_secs(30), "redis-server");
    }
}

/// The environment every role process of a run shares.
pub struct RoleEnv {
    /// Directory of logs (and of the embedded data).
    pub dir: PathBuf,
    /// Variables every role gets.
    pub common: Vec<(String, String)>,
}

impl RoleEnv {
    /// The order topic the roles use.
    pub fn topic(&self) -> String {
        self.common
            .iter()
            .find(|(k, _)| k == "KAFKA_TOPIC")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Roles on `kafka` and `redis`, with topics and group of their own.
    pub fn kafka(dir: &Path, kafka: &Kafka, redis: &Redis, replication: usize) -> Self {
        let prefix = crate::support::unique("fault");
        let common = [
            ("KAFKA_BROKERS", kafka.bootstrap()),
            ("REDIS_ADDR", redis.addr.clone()),
            ("KAFKA_TOPIC", format!("{prefix}-orders")),
            ("DLQ_TOPIC", format!("{prefix}-dlq")),
            ("WORKER_GROUP", format!("{prefix}-group")),
            ("KAFKA_PARTITIONS", "4".into()),
            ("KAFKA_REPLICATION", replication.to_string()),
            // The broker's lowest: a dead worker is noticed within 6 s.
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("ADMIN_ADDR", "127.0.0.1:0".into()),
            ("RUST_LOG", "info".into()),
            // Not the default `data/component-cache`, relative to the tests' directory.
            (
                "COMPONENT_CACHE_DIR",
                crate::support::component_cache()
                    .to_string_lossy()
                    .into_owned(),
            ),
        ];
        Self {
            dir: dir.to_path_buf(),
            common: common.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    /// The embedded mode with its data in `dir/data`.
    pub fn embedded(dir: &Path) -> Self {
        let common = [
            ("DATA_DIR", dir.join("data").to_string_lossy().into_owned()),
            ("ADMIN_ADDR", "127.0.0.1:0".into()),
            ("RUST_LOG", "info".into()),
        ];
        Self {
            dir: dir.to_path_buf(),
            common: common.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    /// `order-pipeline SUBCOMMAND` named `name`, with `extra` variables; not started.
    pub fn role(&self, name: &str, subcommand: &str, extra: &[(&str, String)]) -> Proc {
        let mut env = self.common.clone();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
        Proc::new(
            name,
            vec![
                env!("CARGO_BIN_EXE_order-pipeline").to_string(),
                subcommand.to_string(),
            ],
            env,
            self.dir.join(format!("{name}.log")),
        )
    }
}
