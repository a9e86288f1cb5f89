//! A Redis Cluster of the test's own: six `redis-server` processes (three
//! primaries, three replicas) on free ports, each in its own directory,
//! joined with `redis-cli --cluster create`. Nodes can be killed (their
//! replica takes over) and started again; slots can be moved between
//! primaries; each primary's `INFO commandstats` and `INFO cpu` can be read.
//! Every process is killed on drop.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;
use super::poll::eventually_blocking;

/// Slots in a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// How long a node may go unanswered before the others mark it failed;
/// short, so that a failover takes a few seconds.
const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server` of a [`RedisCluster`].
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (`cluster-port`), chosen free like `port`: the
    /// default `port + 10000` may be past 65535 or taken.
    bus_port: u16,
    password: Option<String>,
    child: Option<Child>,
    /// Holds `nodes.conf`, so a node started again rejoins as itself.
    dir: tempfile::TempDir,
    /// Killed by the kernel when the thread that started it ends (for
    /// [`shared_cluster`], a thread that lives as long as the process):
    /// a static is never dropped.
    dies_with_thread: bool,
}

impl ClusterNode {
    fn launch(password: Option<String>, dies_with_thread: bool) -> ClusterNode {
        let mut node = ClusterNode {
            port: 0,
            bus_port: 0,
            password,
            dies_with_thread,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // Free ports are probed, not bound: another test can take one
        // first, and then redis-server exits at once; take others.
        for _ in 0..5 {
            node.port = free_port();
            node.bus_port = free_port();
            if node.port != node.bus_port && node.spawn() {
                return node;
            }
        }
        panic!("a cluster redis-server did not come up on 5 pairs of free ports in a row");
    }

    /// Starts the process on its ports; false when it exits at once (a
    /// port was taken), panics when it neither exits nor answers.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A failed primary's replica may take over however long it was
            // cut off: the tests kill primaries on purpose.
            .args(["--cluster-replica-validity-factor", "0"])
            // The three-by-three layout stays as built: a primary left
            // without replica does not take one from another.
            .args(["--cluster-allow-replica-migration", "no"])
            // While a primary fails over, the others' slots keep serving
            // (Redis's default stops the whole cluster), as the README
            // says to configure a cluster for sse-notify.
            .args(["--cluster-require-full-coverage", "no"])
            // A replica's first sync starts at once, not after the
            // default 5 s wait for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            // CLUSTER SLOTS lists a replica once its replication offset is
            // past 0, which an idle primary's pings (every 10 s by default)
            // make it.
            .args(["--repl-ping-replica-period", "1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        if self.dies_with_thread {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe, and only that runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let mut exited = false;
        let up = eventually_blocking(Duration::from_secs(10), || {
            exited = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))));
            exited || self.ping()
        });
        assert!(
            up,
            "cluster redis-server on port {} did not come up",
            self.port
        );
        if exited {
            self.child = None;
        }
        !exited
    }

    /// `redis://` URL of this node (with the password, if any).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn ping(&self) -> bool {
        self.query::<String>(&mut redis::cmd("PING")).is_ok()
    }

    /// One command on a fresh plain connection to this node alone (no
    /// redirects followed; short timeouts: it may be down on purpose).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        cmd.query(&mut conn)
    }

    /// A section of `INFO` as field -> value.
    pub fn info(&self, section: &str) -> BTreeMap<String, String> {
        let text: String = self
            .query(redis::cmd("INFO").arg(section))
            .unwrap_or_else(|e| panic!("INFO {section} on {}: {e}", self.port));
        parse_info(&text)
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> String {
        self.query(redis::cmd("CLUSTER").arg("MYID"))
            .unwrap_or_else(|e| panic!("CLUSTER MYID on {}: {e}", self.port))
    }

    /// `INFO commandstats`: command (lower case, `script|load` for
    /// subcommands) -> calls.
    pub fn command_calls(&self) -> BTreeMap<String, u64> {
        self.info("commandstats")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?.to_string();
                let calls = v
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name, calls))
            })
            .collect()
    }

    /// `INFO cpu`: seconds of CPU this process used (system + user, main
    /// thread and the others).
    pub fn cpu_secs(&self) -> f64 {
        let cpu = self.info("cpu");
        ["used_cpu_sys", "used_cpu_user"]
            .iter()
            .map(|k| {
                cpu.get(*k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("INFO cpu on {} has no {k}", self.port))
            })
            .sum()
    }

    /// `INFO errorstats`: error prefix (`CROSSSLOT`, `MOVED`, ...) -> count.
    pub fn error_counts(&self) -> BTreeMap<String, u64> {
        self.info("errorstats")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("errorstat_")?.to_string();
                let count = v.strip_prefix("count=")?.parse().ok()?;
                Some((name, count))
            })
            .collect()
    }

    /// SIGKILL: an outage, not a clean stop.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One cluster for a whole test binary, for scenarios that only need one
/// to run on and never fault it (each scenario keeps to its own
/// `redis.key_prefix`): six processes instead of six per scenario. Started
/// on first use by a thread that lives as long as the process, so that its
/// processes die with the process ([`ClusterNode::dies_with_thread`]).
pub fn shared_cluster() -> &'static RedisCluster {
    static SHARED: std::sync::OnceLock<RedisCluster> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = RedisCluster::launch(None, true);
            // The nodes are the thread's children only while it lives:
            // hand over the handles, then park until the process exits.
            let _ = tx.send(cluster);
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("the shared cluster's thread ended before starting it")
    })
}

/// A six-node Redis Cluster (three primaries, three replicas) of the
/// test's own.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    password: Option<String>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::launch(None, false)
    }

    /// One whose nodes require `password` (`requirepass`, `masterauth`).
    pub fn start_with_password(password: &str) -> RedisCluster {
        Self::launch(Some(password.to_string()), false)
    }

    fn launch(password: Option<String>, dies_with_thread: bool) -> RedisCluster {
        let nodes: Vec<ClusterNode> = (0..6)
            .map(|_| ClusterNode::launch(password.clone(), dies_with_thread))
            .collect();
        let cluster = RedisCluster { nodes, password };
        let mut create = cluster.redis_cli();
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        cluster.run_cli(&mut create, "--cluster create");
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// `redis-cli` with the password, if any.
    fn redis_cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        if let Some(p) = &self.password {
            cli.args(["-a", p, "--no-auth-warning"]);
        }
        cli
    }

    fn run_cli(&self, cmd: &mut Command, what: &str) {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli {what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The running nodes' `redis://` URLs: seeds for a cluster client.
    pub fn seeds(&self) -> Vec<String> {
        self.running().map(ClusterNode::url).collect()
    }

    /// `redis+cluster://[:password@]host:port,host:port,.../`, the seed
    /// list as one URL.
    pub fn cluster_url(&self) -> String {
        let hosts: Vec<String> = self
            .running()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        match &self.password {
            Some(p) => format!("redis+cluster://:{p}@{}/", hosts.join(",")),
            None => format!("redis+cluster://{}/", hosts.join(",")),
        }
    }

    fn running(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The view of one running node: `CLUSTER SLOTS` as slot ranges and the
    /// ports serving them, primary first.
    fn slot_table(&self) -> Vec<(u16, u16, Vec<u16>)> {
        let node = self
            .running()
            .find(|n| n.ping())
            .expect("no cluster node answers");
        let value: redis::Value = node
            .query(redis::cmd("CLUSTER").arg("SLOTS"))
            .expect("CLUSTER SLOTS");
        parse_cluster_slots(&value)
    }

    /// The ports of the primaries serving slots, sorted.
    pub fn primaries(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .slot_table()
            .into_iter()
            .filter_map(|(_, _, ports)| ports.first().copied())
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// The port of the primary serving `slot`.
    pub fn owner(&self, slot: u16) -> u16 {
        self.slot_table()
            .into_iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .and_then(|(_, _, ports)| ports.first().copied())
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// The ports of the replicas of the primary on `primary`.
    pub fn replicas_of(&self, primary: u16) -> Vec<u16> {
        let mut r: Vec<u16> = self
            .slot_table()
            .into_iter()
            .filter(|(_, _, ports)| ports.first() == Some(&primary))
            .flat_map(|(_, _, ports)| ports.into_iter().skip(1))
            .collect();
        r.sort();
        r.dedup();
        r
    }

    /// The slots `primary` serves, ascending.
    pub fn slots_of(&self, primary: u16) -> Vec<u16> {
        self.slot_table()
            .into_iter()
            .filter(|(_, _, ports)| ports.first() == Some(&primary))
            .flat_map(|(lo, hi, _)| lo..=hi)
            .collect()
    }

    /// The slot of `key` (or channel), as the cluster hashes it.
    pub fn slot_of(key: &str) -> u16 {
        key_slot(key.as_bytes())
    }

    /// `count` names `{prefix}N` whose slots differ from each other and are
    /// all served by `primary`.
    pub fn names_on(&self, primary: u16, prefix: &str, count: usize) -> Vec<String> {
        let owned: std::collections::HashSet<u16> = self.slots_of(primary).into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        let names: Vec<String> = (0..100_000)
            .map(|i| format!("{prefix}{i}"))
            .filter(|n| {
                let s = Self::slot_of(n);
                owned.contains(&s) && seen.insert(s)
            })
            .take(count)
            .collect();
        assert_eq!(names.len(), count, "{count} names on primary {primary}");
        names
    }

    /// Waits until every running node says `cluster_state:ok`, knows every
    /// slot as served, agrees on the primaries, lists every running node
    /// (and no other) in `CLUSTER SLOTS`, and every replica is in sync with
    /// its primary.
    pub fn wait_ok(&self, within: Duration) {
        let mut last = String::new();
        let ok = eventually_blocking(within, || match self.state() {
            Ok(()) => true,
            Err(why) => {
                last = why;
                false
            }
        });
        assert!(ok, "within {within:?} the cluster never became ok: {last}");
    }

    fn state(&self) -> Result<(), String> {
        let running: Vec<&ClusterNode> = self.running().collect();
        let mut views = Vec::new();
        for n in &running {
            let text: String = n
                .query(redis::cmd("CLUSTER").arg("INFO"))
                .map_err(|e| format!("CLUSTER INFO on {}: {e}", n.port))?;
            let info = parse_info(&text);
            let field = |k: &str| info.get(k).map(String::as_str).unwrap_or("");
            if field("cluster_state") != "ok" || field("cluster_slots_ok") != "16384" {
                return Err(format!("node {}: {}", n.port, text.replace("\r\n", " ")));
            }
            let value: redis::Value = n
                .query(redis::cmd("CLUSTER").arg("SLOTS"))
                .map_err(|e| format!("CLUSTER SLOTS on {}: {e}", n.port))?;
            let slots = parse_cluster_slots(&value);
            let mut listed: Vec<u16> = slots.iter().flat_map(|(_, _, p)| p.clone()).collect();
            listed.sort();
            listed.dedup();
            let mut ports: Vec<u16> = running.iter().map(|n| n.port).collect();
            ports.sort();
            if listed != ports {
                return Err(format!("node {} lists {listed:?} of {ports:?}", n.port));
            }
            let mut table: Vec<(u16, u16, u16)> = slots
                .into_iter()
                .map(|(lo, hi, ports)| (lo, hi, ports[0]))
                .collect();
            table.sort();
            views.push((n.port, table));
            let repl = n.info("replication");
            if repl.get("role").map(String::as_str) == Some("slave")
                && repl.get("master_link_status").map(String::as_str) != Some("up")
            {
                return Err(format!("replica {} not in sync: {repl:?}", n.port));
            }
        }
        let served: u32 = views[0]
            .1
            .iter()
            .map(|(lo, hi, _)| u32::from(hi - lo) + 1)
            .sum();
        if served != u32::from(CLUSTER_SLOTS) {
            return Err(format!("node {} serves {served} slots", views[0].0));
        }
        if let Some((port, _)) = views.iter().find(|(_, t)| *t != views[0].1) {
            return Err(format!(
                "nodes {} and {port} disagree on the slots",
                views[0].0
            ));
        }
        for (_, _, primary) in &views[0].1 {
            if !running.iter().any(|n| n.port == *primary) {
                return Err(format!("a killed node ({primary}) still serves slots"));
            }
        }
        Ok(())
    }

    /// SIGKILLs the primary on `primary` and waits until its replica has
    /// taken over every slot it served; the new primary's port.
    pub fn kill_primary(&mut self, primary: u16) -> u16 {
        let slot = *self
            .slots_of(primary)
            .first()
            .unwrap_or_else(|| panic!("{primary} is no primary"));
        let replicas = self.replicas_of(primary);
        assert!(!replicas.is_empty(), "primary {primary} has no replica");
        self.node_mut(primary).kill();
        self.wait_ok(Duration::from_secs(20));
        let now = self.owner(slot);
        assert!(
            replicas.contains(&now),
            "slot {slot} went to {now}, not to a replica of {primary}"
        );
        now
    }

    /// SIGKILLs the node on `port`, whatever its role.
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts the node on `port` again (it rejoins with its `nodes.conf`:
    /// a primary that was replaced comes back as a replica) and waits
    /// until the cluster is ok.
    pub fn restart(&mut self, port: u16) {
        let node = self.node_mut(port);
        node.kill();
        assert!(
            node.spawn(),
            "cluster node could not listen on its port {port} again"
        );
        self.wait_ok(Duration::from_secs(20));
    }

    /// Moves `slot` (and its keys) from its primary to the primary on `to`
    /// by hand, the steps `redis-cli --cluster reshard` takes for each
    /// slot: IMPORTING, MIGRATING, MIGRATE the keys, then SETSLOT NODE on
    /// both and on the other primaries.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.owner(slot);
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let (src, dst) = (self.node(from), self.node(to));
        let (src_id, dst_id) = (src.id(), dst.id());
        let setslot = |n: &ClusterNode, args: &[&str]| {
            n.query::<()>(redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(args))
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {args:?} on {}: {e}", n.port))
        };
        setslot(dst, &["IMPORTING", &src_id]);
        setslot(src, &["MIGRATING", &dst_id]);
        loop {
            let keys: Vec<String> = src
                .query(
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(100),
                )
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000);
            if let Some(p) = &self.password {
                migrate.arg("AUTH").arg(p);
            }
            migrate.arg("KEYS").arg(&keys);
            src.query::<()>(&mut migrate).expect("MIGRATE");
        }
        setslot(dst, &["NODE", &dst_id]);
        setslot(src, &["NODE", &dst_id]);
        for p in self.primaries() {
            if p != from && p != to {
                setslot(self.node(p), &["NODE", &dst_id]);
            }
        }
        let moved = eventually_blocking(Duration::from_secs(10), || {
            self.running().all(|n| {
                let value: redis::RedisResult<redis::Value> =
                    n.query(redis::cmd("CLUSTER").arg("SLOTS"));
                value.is_ok_and(|v| {
                    parse_cluster_slots(&v)
                        .iter()
                        .any(|(lo, hi, ports)| (*lo..=*hi).contains(&slot) && ports[0] == to)
                })
            })
        });
        assert!(moved, "not every node sees slot {slot} on {to}");
    }

    /// `redis-cli --cluster reshard`: moves `count` slots (the ones the
    /// tool picks) with their keys from the primary on `from` to the one on
    /// `to`, then waits until the cluster is ok.
    pub fn reshard(&self, from: u16, to: u16, count: u16) {
        let (from_id, to_id) = (self.node(from).id(), self.node(to).id());
        let mut cli = self.redis_cli();
        cli.args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"]);
        self.run_cli(&mut cli, "--cluster reshard");
        self.wait_ok(Duration::from_secs(20));
    }

    /// Each primary's `INFO commandstats` calls, by port.
    pub fn command_calls(&self) -> BTreeMap<u16, BTreeMap<String, u64>> {
        self.primaries()
            .into_iter()
            .map(|p| (p, self.node(p).command_calls()))
            .collect()
    }

    /// Each primary's CPU seconds (`INFO cpu`), by port.
    pub fn cpu_secs(&self) -> BTreeMap<u16, f64> {
        self.primaries()
            .into_iter()
            .map(|p| (p, self.node(p).cpu_secs()))
            .collect()
    }
}

/// `field:value` lines of an `INFO` or `CLUSTER INFO` answer.
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `CLUSTER SLOTS` as (first slot, last slot, ports with the primary
/// first).
fn parse_cluster_slots(value: &redis::Value) -> Vec<(u16, u16, Vec<u16>)> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let Value::Array(ranges) = value else {
        panic!("CLUSTER SLOTS answered {value:?}");
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let (lo, hi) = (int(r.first()?)?, int(r.get(1)?)?);
            let ports = r[2..]
                .iter()
                .filter_map(|n| match n {
                    Value::Array(n) => int(n.get(1)?),
                    _ => None,
                })
                .collect();
            Some((lo, hi, ports))
        })
        .collect()
}

/// The cluster's key slot: CRC16 (XMODEM) of the key, or of its first
/// non-empty `{hash tag}`, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % CLUSTER_SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}
