//! The command line: the modes and the options they share.

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sse-bench",
    version,
    about = "Load test an sse-notify deployment: hold, unicast, broadcast, topic, churn, registry",
    after_help = "Prints progress and a summary on stderr and one JSON line on stdout.\n\
                  Streams connect as u0..u{users-1} (connection i is user i % users) through\n\
                  the --user-header, following the --topics; messages are posted to the\n\
                  admin API.\n\
                  broadcast reaches EVERY stream of the deployment: run it on a test deployment."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) mode: Mode,
}

#[derive(Subcommand)]
pub(crate) enum Mode {
    /// Open --conns streams and hold them --duration seconds (default 10):
    /// connect rate, failures, drops, server memory per stream.
    Hold {
        #[command(flatten)]
        c: Common,
    },
    /// With the streams open, send --messages to random users:
    /// delivered msg/s, delivery ratio, duplicates, end-to-end latency.
    Unicast {
        #[command(flatten)]
        c: Common,
        /// Messages to send
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Concurrent send requests
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        /// Target send rate in msg/s (0 = as fast as --publishers allow)
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// With the streams open, send --broadcasts broadcasts --interval-ms apart:
    /// fan-out rate, completion latency (until every stream has it).
    Broadcast {
        #[command(flatten)]
        c: Common,
        /// Broadcasts to send
        #[arg(long, default_value_t = 20)]
        broadcasts: u64,
        /// Interval between broadcasts, ms
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// With the streams open (following --topics), send --sends messages to
    /// --topic, --interval-ms apart: completion latency (until every stream
    /// following it has it). --beside-broadcast sends a broadcast after each,
    /// for the same figures of a broadcast in the same run.
    Topic {
        #[command(flatten)]
        c: Common,
        /// The topic to send to: one the streams follow (see --topics)
        #[arg(long)]
        topic: String,
        /// Messages to send to the topic
        #[arg(long, default_value_t = 20)]
        sends: u64,
        /// Interval between sends, ms
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// After each topic message, a broadcast (--interval-ms later): both
        /// completions under the same streams and load
        #[arg(long)]
        beside_broadcast: bool,
    },
    /// For --duration seconds (default 60), close and reopen --reconnect-pct
    /// percent of the live streams every second while sending --send-rate
    /// msg/s to random users: reconnects, errors, delivery to the streams
    /// that were live across each message, registry vs. live streams.
    Churn {
        #[command(flatten)]
        c: Common,
        /// Percent of the live streams closed and reopened every second
        #[arg(long, default_value_t = 10.0)]
        reconnect_pct: f64,
        /// Messages per second to random users
        #[arg(long, default_value_t = 100.0)]
        send_rate: f64,
        /// Concurrent send requests
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        /// A stream closed less than this after a send returned is not
        /// expected to have received it
        #[arg(long, default_value_t = 1000)]
        grace_ms: u64,
    },
    /// Write --records connection records into the deployment's Redis (as
    /// a crash leaves them, --stale-pct of them stale), then time the whole
    /// listing, one page and a full clear through the admin API, with
    /// Redis's longest PING and the server's peak RSS (--server-pid) during
    /// each. Streams are not opened; --users defaults to records / 2.
    /// The clear removes every record: run it on a test deployment.
    Registry {
        #[command(flatten)]
        c: Common,
        /// The deployment's Redis (redis.url)
        #[arg(long)]
        redis_url: String,
        /// The deployment's redis.key_prefix
        #[arg(long, default_value = "sse")]
        key_prefix: String,
        /// Records to write
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Percent of them with an hour-old heartbeat
        #[arg(long, default_value_t = 50.0)]
        stale_pct: f64,
        /// Users of the timed page
        #[arg(long, default_value_t = 1000)]
        page_limit: usize,
    },
}

impl Mode {
    /// The mode's name (the `mode` of the JSON line) and its shared options.
    pub(crate) fn parts(&self) -> (&'static str, &Common) {
        match self {
            Mode::Hold { c } => ("hold", c),
            Mode::Unicast { c, .. } => ("unicast", c),
            Mode::Broadcast { c, .. } => ("broadcast", c),
            Mode::Topic { c, .. } => ("topic", c),
            Mode::Churn { c, .. } => ("churn", c),
            Mode::Registry { c, .. } => ("registry", c),
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// The stream URL (public listener, or the proxy in front of it); `{user}`
    /// is replaced by the user name (e.g. `?user={user}` for auth.mode = "none")
    #[arg(long, default_value = "http://127.0.0.1:8090/notifications/stream/")]
    pub(crate) stream_url: String,
    /// The admin listener (REST API, /metrics): http://host:port, or its
    /// Unix socket as unix:/run/sse-notify/admin.sock (or unix:///...)
    #[arg(long, default_value = "http://127.0.0.1:8091")]
    pub(crate) admin_url: String,
    /// server.base_path of the API routes
    #[arg(long, default_value = "/notifications")]
    pub(crate) base_path: String,
    /// Header carrying the user name (auth.header); "" sends none
    #[arg(long, default_value = "X-Remote-User")]
    pub(crate) user_header: String,
    /// User names are this prefix + index (pick one no real user has)
    #[arg(long, default_value = "u")]
    pub(crate) user_prefix: String,
    /// api.token of the deployment (Authorization: Bearer on admin requests)
    #[arg(long, env = "SSE_BENCH_API_TOKEN", hide_env_values = true)]
    pub(crate) api_token: Option<String>,
    /// Topics every stream follows (`?topics=` of its stream URL), comma-
    /// separated; `{i}` is the stream's index, `{user}` its user: `news,sport`
    /// (shared by all), `s{i}-a,s{i}-b` (each stream's own)
    #[arg(long, default_value = "")]
    pub(crate) topics: String,
    /// Header naming the topics a stream may follow (auth.topics_header),
    /// sent with the stream's own --topics; "" sends none
    #[arg(long, default_value = "X-Remote-Topics")]
    pub(crate) topics_header: String,
    /// Streams to open
    #[arg(long, default_value_t = 1000)]
    pub(crate) conns: usize,
    /// Distinct users (stream i is user i % users); default: --conns
    #[arg(long)]
    pub(crate) users: Option<usize>,
    /// hold: how long to hold; churn: how long to churn; unicast/broadcast:
    /// cap on the sending phase (default 10, 60, 120 s)
    #[arg(long, value_parser = seconds)]
    pub(crate) duration: Option<f64>,
    /// Stream connects in flight at once
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Seconds a stream may take to get its connection_established event
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub(crate) connect_timeout: f64,
    /// Seconds to wait after connecting, before measuring
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    pub(crate) settle: f64,
    /// Seconds to wait for outstanding deliveries after the last send
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub(crate) drain: f64,
    /// Spread the client sockets over K source addresses 127.0.0.2.. (loopback
    /// IPv4 targets only; auth.trusted_proxies must include them); 0 = none
    #[arg(long, default_value_t = 0)]
    pub(crate) src_ips: u8,
    /// PID of the sse-notify process (same host) to sample VmRSS and CPU from
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Seconds between RSS / registry samples
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    pub(crate) sample_secs: f64,
    /// Tokio worker threads of the bench (raise it on a machine of its own)
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Seed of the random choices (users, streams to reconnect)
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Hard cap on the whole run in seconds: past it the process exits 3
    #[arg(long, default_value_t = 900.0, value_parser = seconds)]
    pub(crate) max_runtime: f64,
}

/// The largest number of seconds an option takes: far beyond any run, and
/// small enough to be a `Duration` and to be added to an `Instant`.
const MAX_SECONDS: f64 = 1e9;

/// Parses a number of seconds. Every such option becomes a `Duration`,
/// which panics on a negative, infinite or NaN value: refuse those here, with
/// the option's name, instead of dying mid-run with no JSON line.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if (0.0..=MAX_SECONDS).contains(&v) {
        Ok(v)
    } else {
        Err(format!("seconds from 0 to {MAX_SECONDS}, not {s}"))
    }
}

impl Common {
    /// The base URL of the admin API and, when `--admin-url` is a Unix
    /// socket, its file (requests then go over it, and the URL's
    /// `localhost` is only their `Host`).
    pub(crate) fn admin_target(&self) -> (String, Option<std::path::PathBuf>) {
        match self.admin_url.strip_prefix("unix:") {
            Some(path) => {
                let path = path.strip_prefix("//").unwrap_or(path);
                ("http://localhost".into(), Some(path.into()))
            }
            None => (self.admin_url.trim_end_matches('/').to_string(), None),
        }
    }

    /// A client builder for the admin API, over its socket if it has one.
    pub(crate) fn admin_client(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        match self.admin_target().1 {
            Some(path) => builder.unix_socket(path),
            None => builder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_must_be_a_duration() {
        assert_eq!(seconds("2.5"), Ok(2.5));
        assert_eq!(seconds("0"), Ok(0.0));
        for bad in ["-1", "inf", "NaN", "1e300", "ten"] {
            assert!(seconds(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn options_are_shared_by_every_mode() {
        for mode in ["hold", "unicast", "broadcast", "churn"] {
            let cli = Cli::try_parse_from(["sse-bench", mode, "--conns", "7", "--drain", "0.5"])
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let (name, c) = cli.mode.parts();
            assert_eq!(name, mode);
            assert_eq!(c.conns, 7);
            assert_eq!(c.drain, 0.5);
            assert_eq!(c.users, None);
        }
        let cli = Cli::try_parse_from(["sse-bench", "topic", "--topic", "t", "--topics", "t,u{i}"])
            .expect("topic mode");
        let (name, c) = cli.mode.parts();
        assert_eq!((name, c.topics.as_str()), ("topic", "t,u{i}"));
        assert!(
            Cli::try_parse_from(["sse-bench", "topic"]).is_err(),
            "topic mode names its topic"
        );
        let refused = Cli::try_parse_from(["sse-bench", "hold", "--connect-timeout=-1"]);
        assert!(refused.is_err(), "a negative timeout is refused");
    }
}
