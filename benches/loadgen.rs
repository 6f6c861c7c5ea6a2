//! Load generator for RealtimeHub (and for any server speaking the same
//! minimal protocol, such as the Node peer in `benches/peers/node-ws`).
//!
//! ```text
//! cargo bench --bench loadgen -- SCENARIO [--flags]
//!
//!   fanout  --members N --publishers P --rate R --size S [--window W]
//!   rooms   --connections C --room-size K --rate R --size S [--window W]
//!   idle    --connections N [--hold SECONDS]
//!   connect --connections N [--concurrency K]
//!   ingest  --rooms N --publishers P [--window W] [--size S]
//!   abuse   --attack ws|rest|both [--heavy-messages N] [--heavy-size B]
//!           [--members N] [--rate R] [--publishers P] [--attack-rate R] [--read-ids N]
//!
//! common: --addr HOST:PORT   target a running server instead of spawning the hub
//!         --pid PID          that server's process id (CPU and RSS figures)
//!         --duration SECS    measured time (default 10, at most 600)
//!         --warmup SECS      unmeasured lead-in (default 1)
//!         --hub-bin PATH     hub binary to spawn (default: this build's realtimehub)
//!         --hub-arg ARG      extra argument for the spawned hub (repeatable)
//!         --label NAME       printed as target=NAME in the RESULT line
//!         --quiet            no per-second progress lines on stderr
//!         --dialect native|socketio|pusher   what the clients speak (default native)
//! ```
//!
//! One thread, one mio `Poll`, non-blocking sockets. Client frames are written
//! by hand (masked text frames); server frames are parsed in place from a
//! shared read buffer, and a frame is classified by byte search, so nothing is
//! allocated per received frame. A message's `content` starts with the send
//! time (nanoseconds since the generator's start, 20 zero-padded digits) and is
//! padded to `--size` bytes; its `tempId` starts with the same digits, so both
//! delivery latency (broadcast receipt) and publish→ack latency are computed on
//! receipt. Latencies go into a fixed-bucket log-linear histogram.
//!
//! `--dialect socketio` (issue 10; `fanout`, `rooms`, `ingest`, `idle` and
//! `connect`, not `abuse`) speaks the hub's Socket.IO dialect instead, as the
//! Node peer in `benches/peers/node-socketio` does: each client opens
//! `/socket.io/?EIO=4&transport=websocket`, answers the Engine.IO open packet
//! `0{...}` with `40{"apiKey":KEY,"userId":"uN"}` and counts as connected on
//! `40{"sid":...}`; a join is `42["join_thread",{"threadId":ROOM}]`, answered
//! by `42["thread_joined",...]`; a message is
//! `42["message_send",{"threadId":ROOM,"tempId":T,"content":C}]` (same
//! timestamps in `tempId` and `content`), its slot frees on
//! `42["message_id_mapping",...]`, and deliveries are
//! `42["message",{"message":{...}}]`. Engine.IO pings (`2`) are answered `3`.
//! Packets are classified by byte search as in the native dialect; the RESULT
//! line then carries `dialect=socketio`.
//!
//! `--dialect pusher` (`fanout` only) makes the members that do not publish
//! Pusher protocol 7 subscribers; the P publishers stay native (they join and
//! publish with the native frames, and receive their own room's messages
//! natively), so every message is still delivered N times, N - P of them as
//! Pusher events. A subscriber opens
//! `/app/{projectId}?protocol=7&client=js&version=8.4.0` (the project id, from
//! `GET /api/v1/project`, is the Pusher app key), counts as connected on
//! `pusher:connection_established`, subscribes with
//! `{"event":"pusher:subscribe","data":{"channel":ROOM}}` (answered by
//! `pusher_internal:subscription_succeeded`) and counts `message` events,
//! whose `data` is the native frame as a JSON string: the timestamp and `seq`
//! are found escaped (`\"content\":\"`, `\"seq\":`) in it. `pusher:ping` is
//! answered `pusher:pong`; `pusher:error` and `pusher:subscription_error`
//! count as error frames (`error_pusher_CODE`, `error_subscription_STATUS`).
//! The RESULT line carries `dialect=pusher pusher_subscribers=N-P` and
//! `pusher_pings` (the hub pings a Pusher client silent for half its
//! `--ws-idle-timeout-ms`, so runs longer than about 30 s see them).
//!
//! Each scenario prints one machine-readable line:
//! `RESULT scenario=NAME key=value ...`.
//!
//! Roles: in `fanout`, all N members join one room and the first P of them also
//! publish (every message is delivered N times). In `rooms`, C connections form
//! C/K rooms of K; the first member of each room publishes. `--rate` is messages
//! per second per publisher; 0 means a closed loop keeping `--window` messages
//! in flight per publisher (a slot frees when its `message_id_mapping` arrives).
//!
//! `ingest`: P publishers share N rooms (publisher p joins the rooms r with
//! r % P == p), each keeps `--window` messages in flight; the figure is stored
//! (acknowledged) messages per second and publish→ack latency. `idle`: opens N
//! WebSockets, holds them `--hold` seconds, and reads the server's VmRSS before
//! and after. `connect`: opens N WebSockets, `--concurrency` handshakes at a
//! time, and times TCP connect → `connected` frame.
//!
//! `abuse` (issue 17): does one heavy client slow everyone else down? Setup over
//! REST: a public room `town` filled with `--heavy-messages` (1000) messages of
//! `--heavy-size` (32000) bytes, 8 posts in flight, and a room `quiet` whose
//! `--members` (50) connections receive `--rate` (200) messages per second in
//! all from `--publishers` of them (default `rate / 50`, so each stays at half
//! the hub's default budget). A probe sends `GET /health` every 5 ms, pipelined
//! on one keep-alive connection, and times each answer. After `--warmup`, a
//! quiet phase and then an abuse phase of `--duration` each: the abuse phase
//! keeps that traffic and adds the attackers. `--attack ws`: one WebSocket with
//! a signed token for `town` only cycles through `join since:0`,
//! `history limit=1000`, `read` of the `--read-ids` (1000) newest ids (taken
//! from the setup's answers) and `leave`, as fast as the socket takes them (or at
//! `--attack-rate` events/s), reading everything it gets; a closed attacker
//! reconnects. `--attack rest`: 4 keep-alive connections loop
//! `GET /api/v1/rooms/town/messages?limit=1000` with the project key, one
//! request in flight each. `both` (the default) runs the two. The spawned hub
//! keeps its default limits here (rate budget, connection caps): the point is
//! what a client may do within them. RESULT: `quiet_*`/`abuse_*` p50/p99/max of
//! `/health` (by send time) and of the quiet room's delivery, `health_p99_ratio`
//! and `room_p99_ratio` (abuse p99 / quiet p99), `target_2x=met` when both are
//! at most 2; `ws_sent`/`ws_answered`/`ws_refused` (`rate_limited`)/`ws_errors`,
//! per kind `ws_join=answered/refused/sent` (a `read` of ids already read has no
//! answer: it counts as answered when the next answer comes), `ws_connects`,
//! `ws_closes`; `rest_sent`, `rest_200`, `rest_429`, `rest_other`, `rest_closes`;
//! `quiet_refused`/`quiet_closed`: the quiet room's publishers refused
//! `rate_limited` or closed (their queued messages meet the budget all at once
//! after a stall); CPU shares and hub histograms per phase
//! (`quiet_server_cpu_pct`, `abuse_…`).
//!
//! RESULT fields: `*_per_s` are counted inside the measured window (after
//! `--warmup`); `p50_us`/`p99_us`/`p999_us`/`max_us` are latencies;
//! `cpu_us_per_delivery` (or `_per_message`, `_per_conn`) is the server's
//! utime+stime from /proc/PID/stat divided by the work done; `server_cpu_pct`,
//! `gen_cpu_pct`, `irq_cpu_pct` and `other_cpu_pct` are shares of one core
//! taken by the server, the generator, interrupts and softirqs (mostly the
//! run's own loopback TCP, charged to no process) and every other process on
//! the machine (a busy neighbour makes the run noisy); `lost` is expected minus received deliveries after a
//! drain of up to 5 s; `seq_gaps` counts broadcasts whose `seq` did not follow
//! the previous one on that connection; `closed`, `close_CODE`, `error_CODE`
//! and `failed_connects` count what the server refused or closed;
//! `hub_commit*` and `hub_iteration*` summarise the hub's own `/metrics`
//! histograms of SQLite commit and event-loop iteration durations, scraped
//! just before the run and at its end (warm-up included; absent for servers
//! without `/metrics`).
//!
//! When the hub is spawned here it gets a temporary database and raised limits
//! (`--max-events-per-second`, `--max-connections`, `--max-connections-per-ip`,
//! `--max-rooms-per-connection`) so the generator measures throughput rather
//! than the abuse limits. A server given with `--addr` must be started with
//! such limits by whoever runs it. The soft open-file limit is raised to the
//! hard one in-process (`setrlimit`), and the spawned hub inherits it; above
//! the hard limit, raise it with `ulimit -Hn` as root first.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use memchr::memmem::Finder;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

// ---------------------------------------------------------------- histogram

/// Linear sub-buckets per power of two: 2^7 = 128, so a bucket is at most
/// 1/128 (0.8 %) of its value wide.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const LINEAR: usize = 2 * SUB;
const BUCKETS: usize = LINEAR + (64 - SUB_BITS as usize - 2) * SUB;

/// An HDR-style log-linear histogram of nanosecond values: exact below 256,
/// then 128 linear buckets per power of two up to 2^64. Fixed size; recording
/// is an index computation and an increment.
struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram { counts: vec![0u64; BUCKETS].into_boxed_slice(), total: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        LINEAR + (shift as usize - 1) * SUB + ((v >> shift) as usize - SUB)
    }

    /// The lowest value of bucket `i` and the bucket's width.
    fn bucket(i: usize) -> (u64, u64) {
        if i < LINEAR {
            return (i as u64, 1);
        }
        let j = i - LINEAR;
        let shift = (j / SUB + 1) as u32;
        let mantissa = (j % SUB + SUB) as u64;
        (mantissa << shift, 1u64 << shift)
    }

    #[inline]
    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        if v > self.max {
            self.max = v;
        }
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, never above the maximum.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = Self::bucket(i);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        self.max = 0;
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

// ---------------------------------------------------------------- options

struct Opts {
    scenario: String,
    addr: Option<SocketAddr>,
    pid: Option<u32>,
    hub_bin: String,
    hub_args: Vec<String>,
    label: Option<String>,
    duration: f64,
    warmup: f64,
    members: Option<usize>,
    publishers: Option<usize>,
    rate: f64,
    size: usize,
    window: usize,
    connections: Option<usize>,
    room_size: usize,
    rooms: usize,
    concurrency: usize,
    hold: f64,
    heavy_messages: usize,
    heavy_size: usize,
    attack: Attack,
    attack_rate: f64,
    read_ids: usize,
    quiet: bool,
    dialect: Dialect,
}

/// What the clients speak (`--dialect`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dialect {
    /// The hub's own JSON frames at `/`.
    Native,
    /// Socket.IO v5 over Engine.IO v4's WebSocket transport at `/socket.io/`.
    SocketIo,
    /// Pusher protocol 7 subscribers at `/app/{appKey}`; publishers stay native.
    Pusher,
}

impl Dialect {
    /// Its `--dialect` name (and `dialect=` in the RESULT line).
    fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::SocketIo => "socketio",
            Dialect::Pusher => "pusher",
        }
    }
}

const USAGE: &str = "usage: cargo bench --bench loadgen -- SCENARIO [--flags]
scenarios:
  fanout  --members N (1000) --publishers P (4) --rate R (0 = closed loop) --size S (64) --window W (4)
  rooms   --connections C (10000) --room-size K (10) --rate R (1) --size S (64) --window W (4)
  idle    --connections N (10000) --hold SECONDS (2)
  connect --connections N (2000) --concurrency K (64)
  ingest  --rooms N (100) --publishers P (8) --window W (8) --size S (64)
  abuse   --attack ws|rest|both (both) --heavy-messages N (1000) --heavy-size B (32000)
          --members N (50) --rate R (200 in all) --publishers P (R/50) --size S (64)
          --attack-rate R (0 = as fast as it can) --read-ids N (1000)
common flags: --addr HOST:PORT --pid PID --duration SECS (10, max 600) --warmup SECS (1)
              --hub-bin PATH --hub-arg ARG (repeatable) --label NAME --concurrency K --quiet
              --dialect native|socketio|pusher (native; socketio: not for abuse; pusher: fanout only)";

fn parse_opts(args: Vec<String>) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        scenario: String::new(),
        addr: None,
        pid: None,
        hub_bin: env!("CARGO_BIN_EXE_realtimehub").to_string(),
        hub_args: Vec::new(),
        label: None,
        duration: 10.0,
        warmup: 1.0,
        members: None,
        publishers: None,
        rate: f64::NAN,
        size: 64,
        window: 0,
        connections: None,
        room_size: 10,
        rooms: 100,
        concurrency: 64,
        hold: 2.0,
        heavy_messages: 1000,
        heavy_size: 32_000,
        attack: Attack::Both,
        attack_rate: 0.0,
        read_ids: 1000,
        quiet: false,
        dialect: Dialect::Native,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // `cargo bench` appends `--bench` to every harness-less bench.
        if arg == "--bench" {
            continue;
        }
        if !arg.starts_with("--") {
            if !o.scenario.is_empty() {
                return Err(format!("unexpected argument {arg:?}"));
            }
            o.scenario = arg;
            continue;
        }
        if arg == "--quiet" {
            o.quiet = true;
            continue;
        }
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            return Ok(None);
        }
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|_| format!("{arg}: {v:?} is not a number"));
        let int = |v: &str| v.parse::<usize>().map_err(|_| format!("{arg}: {v:?} is not a whole number"));
        match arg.as_str() {
            "--addr" => {
                let addr = value
                    .to_socket_addrs()
                    .map_err(|e| format!("--addr {value}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--addr {value}: no address"))?;
                if !addr.ip().is_loopback() {
                    return Err(format!("--addr {value}: only loopback targets are allowed"));
                }
                o.addr = Some(addr);
            }
            "--pid" => o.pid = Some(int(&value)? as u32),
            "--hub-bin" => o.hub_bin = value,
            "--hub-arg" => o.hub_args.push(value),
            "--label" => o.label = Some(value),
            "--duration" => o.duration = num(&value)?,
            "--warmup" => o.warmup = num(&value)?,
            "--members" => o.members = Some(int(&value)?),
            "--publishers" => o.publishers = Some(int(&value)?),
            "--rate" => o.rate = num(&value)?,
            "--size" => o.size = int(&value)?,
            "--window" => o.window = int(&value)?,
            "--connections" => o.connections = Some(int(&value)?),
            "--room-size" => o.room_size = int(&value)?,
            "--rooms" => o.rooms = int(&value)?,
            "--concurrency" => o.concurrency = int(&value)?,
            "--hold" => o.hold = num(&value)?,
            "--heavy-messages" => o.heavy_messages = int(&value)?,
            "--heavy-size" => o.heavy_size = int(&value)?,
            "--attack" => {
                o.attack = match value.as_str() {
                    "ws" => Attack::Ws,
                    "rest" => Attack::Rest,
                    "both" => Attack::Both,
                    _ => return Err(format!("--attack {value}: expected ws, rest or both")),
                }
            }
            "--attack-rate" => o.attack_rate = num(&value)?,
            "--read-ids" => o.read_ids = int(&value)?,
            "--dialect" => {
                o.dialect = match value.as_str() {
                    "native" => Dialect::Native,
                    "socketio" => Dialect::SocketIo,
                    "pusher" => Dialect::Pusher,
                    _ => return Err(format!("--dialect {value}: expected native, socketio or pusher")),
                }
            }
            _ => return Err(format!("unknown flag {arg}")),
        }
    }
    if o.scenario.is_empty() {
        return Ok(None);
    }
    if o.dialect == Dialect::SocketIo && o.scenario == "abuse" {
        return Err("--dialect socketio is for fanout, rooms, ingest, idle and connect, not abuse".into());
    }
    if o.dialect == Dialect::Pusher && o.scenario != "fanout" {
        return Err("--dialect pusher is for fanout only (Pusher subscribers, native publishers)".into());
    }
    if !(o.duration > 0.0 && o.duration <= 600.0) {
        return Err("--duration must be in (0, 600] seconds".into());
    }
    if !(0.0..=60.0).contains(&o.warmup) || !(0.0..=600.0).contains(&o.hold) {
        return Err("--warmup must be in [0, 60] and --hold in [0, 600] seconds".into());
    }
    if o.size < 20 || o.size > 32 * 1024 {
        return Err("--size must be 20..=32768 bytes (the content carries a 20-digit timestamp)".into());
    }
    if o.concurrency == 0 || o.concurrency > 4096 {
        return Err("--concurrency must be 1..=4096".into());
    }
    if let Some(c) = o.connections {
        if c == 0 || c > 100_000 {
            return Err("--connections must be 1..=100000".into());
        }
    }
    if o.members.is_some_and(|m| m == 0 || m > 100_000) || o.room_size == 0 || o.rooms == 0 || o.rooms > 100_000 {
        return Err("--members, --room-size and --rooms must be positive (at most 100000)".into());
    }
    if o.rate.is_finite() && !(0.0..=1_000_000.0).contains(&o.rate) {
        return Err("--rate must be 0..=1000000 messages per second per publisher".into());
    }
    if o.heavy_messages == 0 || o.heavy_messages > 100_000 || o.heavy_size == 0 || o.heavy_size > 1 << 20 {
        return Err("--heavy-messages must be 1..=100000 and --heavy-size 1..=1048576 bytes".into());
    }
    if o.read_ids == 0 || o.read_ids > 1000 {
        return Err("--read-ids must be 1..=1000 (the protocol's largest `read`)".into());
    }
    if !(0.0..=1_000_000.0).contains(&o.attack_rate) {
        return Err("--attack-rate must be 0..=1000000 events per second (0: as fast as it can)".into());
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------- process helpers

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process in microseconds, from /proc/PID/stat.
fn cpu_us(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 1e6 / clock_ticks_per_s())
}

/// Busy CPU time of the whole machine (all cores) in microseconds, from /proc/stat.
fn machine_busy_us() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle,
    // iowait and interrupts (which serve our own loopback traffic too).
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(7)?;
    Some(busy * 1e6 / clock_ticks_per_s())
}

/// Interrupt and softirq time of the whole machine in microseconds: mostly the
/// loopback TCP work of the run itself, charged to no process.
fn machine_irq_us() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    Some((f.get(5)? + f.get(6)?) * 1e6 / clock_ticks_per_s())
}

/// CPU time of the server, this generator and the whole machine, sampled together.
#[derive(Clone, Copy)]
struct CpuSample {
    server: Option<f64>,
    gen: Option<f64>,
    machine: Option<f64>,
    irq: Option<f64>,
}

impl CpuSample {
    fn take(pid: Option<u32>) -> CpuSample {
        CpuSample { server: cpu_us(pid), gen: cpu_us(None), machine: machine_busy_us(), irq: machine_irq_us() }
    }

    /// Appends server_cpu_pct, gen_cpu_pct and other_cpu_pct (everything else
    /// on the machine: a busy neighbour makes the run noisy) over `secs`,
    /// each name preceded by `prefix`.
    fn report(&self, later: &CpuSample, secs: f64, prefix: &str, line: &mut ResultLine) {
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / (secs * 1e4));
        let server = pct(self.server, later.server);
        let gen = pct(self.gen, later.gen);
        if let Some(v) = server {
            line.kv(&format!("{prefix}server_cpu_pct"), format!("{v:.0}"));
        }
        if let Some(v) = gen {
            line.kv(&format!("{prefix}gen_cpu_pct"), format!("{v:.0}"));
        }
        if let Some(irq) = pct(self.irq, later.irq) {
            line.kv(&format!("{prefix}irq_cpu_pct"), format!("{irq:.0}"));
        }
        if let Some(all) = pct(self.machine, later.machine) {
            let other = all - server.unwrap_or(0.0) - gen.unwrap_or(0.0);
            line.kv(&format!("{prefix}other_cpu_pct"), format!("{:.0}", other.max(0.0)));
        }
    }
}

/// Resident set size in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises the soft open-file limit to the hard limit (children inherit it).
fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Sets SO_LINGER to zero so closing sends RST and leaves no TIME_WAIT behind
/// (thousands of benchmark connections would otherwise hold ephemeral ports).
fn linger_zero(fd: i32) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: fd is an open socket owned by the caller; the struct outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The server under test: spawned here, or given with `--addr`.
struct Target {
    addr: SocketAddr,
    pid: Option<u32>,
    label: String,
    child: Option<Child>,
    _stdout: Option<ChildStdout>,
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// With `raise_limits: Some(n)` a spawned hub gets the raised limits
    /// described in the module docs, sized for `n` connections; with `None`
    /// it keeps its defaults (the abuse limits are what `abuse` measures).
    fn start(o: &Opts, raise_limits: Option<usize>) -> Result<Target, String> {
        if let Some(addr) = o.addr {
            return Ok(Target {
                addr,
                pid: o.pid,
                label: o.label.clone().unwrap_or_else(|| "external".into()),
                child: None,
                _stdout: None,
                log: None,
                _dir: None,
            });
        }
        let dir = tempfile::Builder::new().prefix("rthub-bench").tempdir().map_err(|e| e.to_string())?;
        let db = dir.path().join("bench.db");
        let log = dir.path().join("hub.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut args: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--db".into(),
            db.display().to_string(),
        ];
        if let Some(max_connections) = raise_limits {
            let raised = [
                ("--max-connections", (max_connections + 64).to_string()),
                ("--max-events-per-second", "1000000".to_string()),
                ("--max-connections-per-ip", (max_connections + 64).to_string()),
                ("--max-rooms-per-connection", "100000".to_string()),
            ];
            for (flag, value) in raised {
                args.push(flag.into());
                args.push(value);
            }
        }
        args.extend(o.hub_args.iter().cloned());
        let mut child = Command::new(&o.hub_bin)
            .args(&args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e} (run `cargo build --release` first?)", o.hub_bin))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port.filter(|_| line.starts_with("listening on ")) else {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("hub did not start (stdout {line:?}): {}", err.trim()));
        };
        let pid = child.id();
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid: Some(pid),
            label: o.label.clone().unwrap_or_else(|| "hub".into()),
            child: Some(child),
            _stdout: Some(reader.into_inner()),
            log: Some(log),
            _dir: Some(dir),
        })
    }

    /// Whether a spawned hub has died on its own.
    fn died(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL; reports the hub's warnings and errors.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let mut status = None;
        if let Ok(Some(s)) = child.try_wait() {
            eprintln!("loadgen: the hub had exited before the end of the run: {s}");
            status = Some(s);
        } else {
            // SAFETY: the pid is our own child's, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(s)) = child.try_wait() {
                    status = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if status.is_none() {
                eprintln!("loadgen: the hub did not exit within 5 s of SIGTERM; killing it");
                let _ = child.kill();
                status = child.wait().ok();
            }
        }
        if let Some(s) = status.filter(|s| !s.success()) {
            eprintln!("loadgen: hub exit status {s}");
        }
        let Some(log) = &self.log else { return };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let notable: Vec<&str> = text
            .lines()
            .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("--admin-token"))
            .collect();
        if !notable.is_empty() {
            eprintln!("loadgen: hub log has {} warning/error lines; first ones:", notable.len());
            for l in notable.iter().take(8) {
                eprintln!("  {l}");
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- REST setup

/// A blocking keep-alive HTTP/1.1 client for the setup calls.
struct Http {
    sock: std::net::TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Result<Http, String> {
        let sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        Ok(Http { sock, host: addr.to_string(), buf: Vec::new() })
    }

    fn request(&mut self, method: &str, path: &str, key: Option<&str>, body: &str) -> Result<(u16, String), String> {
        self.send(method, path, key, body)?;
        self.recv(method, path)
    }

    /// Writes one request; `recv` reads the answers in order (pipelining).
    fn send(&mut self, method: &str, path: &str, key: Option<&str>, body: &str) -> Result<(), String> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(key) = key {
            let _ = write!(req, "X-API-Key: {key}\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.sock.write_all(req.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))
    }

    /// Reads the next answer: (status, body). `method` and `path` only label errors.
    fn recv(&mut self, method: &str, path: &str) -> Result<(u16, String), String> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0usize);
                if self.buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).to_string();
                    self.buf.drain(..end + 4 + len);
                    return Ok((status, body));
                }
            }
            let n = self.sock.read(&mut chunk).map_err(|e| format!("{method} {path}: {e}"))?;
            if n == 0 {
                return Err(format!("{method} {path}: connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Creates a project and the named public rooms; returns the API key.
fn setup_project(addr: SocketAddr, rooms: &[String]) -> Result<String, String> {
    let mut http = Http::connect(addr)?;
    let (status, body) = http.request("POST", "/api/v1/projects", None, r#"{"name":"bench"}"#)?;
    if status != 201 && status != 200 {
        return Err(format!("POST /api/v1/projects: {status} {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("project answer {body:?}: {e}"))?;
    let key = v["apiKey"].as_str().ok_or_else(|| format!("no apiKey in {body}"))?.to_string();
    for name in rooms {
        let body = format!(r#"{{"name":"{name}","type":"public"}}"#);
        let (status, answer) = http.request("POST", "/api/v1/rooms", Some(&key), &body)?;
        if status != 201 && status != 200 && status != 409 {
            return Err(format!("POST /api/v1/rooms {name}: {status} {answer}"));
        }
    }
    Ok(key)
}

// ---------------------------------------------------------------- the client network

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Connecting,
    Upgrading,
    Open,
    /// A plain keep-alive HTTP/1.1 connection, connected.
    Http,
    Closed,
}

/// What a connection speaks once TCP is up.
enum Dial {
    /// A WebSocket as user `u{index}` with the project key.
    Ws,
    /// A WebSocket with this upgrade query, e.g. `token=JWT`.
    WsQuery(String),
    /// Plain HTTP/1.1 requests (queued with `Net::send_raw`).
    Http,
    /// A Pusher protocol 7 WebSocket at `/app/{appKey}` (`--dialect pusher`).
    Pusher,
}

struct Conn {
    sock: Option<TcpStream>,
    st: St,
    dial: Dial,
    /// Bytes of an incomplete frame (or upgrade response) kept between reads.
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    dirty: bool,
    /// Got its `connected` frame.
    hello: bool,
    /// When the connect started (ns since the generator's start).
    t0: u64,
}

/// A received text frame, classified without allocating. An error's `event`
/// is the refused frame's type (empty when `null`); `Other` carries the type.
enum In<'a> {
    Connected,
    Joined,
    Message { ts: u64, seq: u64 },
    Ack { ts: u64 },
    Error { code: &'a [u8], event: &'a [u8] },
    Other { kind: &'a [u8] },
}

trait Handler {
    fn frame(&mut self, conn: usize, frame: In<'_>, now: u64);

    /// One complete HTTP response on a `Dial::Http` connection.
    fn http(&mut self, _conn: usize, _status: u16, _body: &[u8], _now: u64) {}
}

/// Counts of what went wrong, reported in the RESULT line.
#[derive(Default)]
struct Trouble {
    /// Connections the server closed (close frame or EOF) or that failed.
    closed: u64,
    close_codes: Vec<(u16, u64)>,
    error_codes: Vec<(String, u64)>,
    failed_connects: u64,
    samples: Vec<String>,
}

impl Trouble {
    fn note(&mut self, what: String) {
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }

    fn summary(&self) -> String {
        let mut s = format!("closed={} failed_connects={}", self.closed, self.failed_connects);
        let errors: u64 = self.error_codes.iter().map(|(_, n)| n).sum();
        let _ = write!(s, " error_frames={errors}");
        for (code, n) in &self.error_codes {
            let _ = write!(s, " error_{code}={n}");
        }
        for (code, n) in &self.close_codes {
            let _ = write!(s, " close_{code}={n}");
        }
        s
    }
}

/// Everything the frame parser needs besides the connection itself.
struct Cx {
    start: Instant,
    f_type: Finder<'static>,
    f_content: Finder<'static>,
    f_temp: Finder<'static>,
    f_seq: Finder<'static>,
    f_code: Finder<'static>,
    f_event: Finder<'static>,
    /// Pusher: `content` and `seq` of the native frame inside a `data` string.
    f_esc_content: Finder<'static>,
    f_esc_seq: Finder<'static>,
    /// Pusher: the numeric `code` of `pusher:error` and the `status` of
    /// `pusher:subscription_error` (inside its `data` string).
    f_num_code: Finder<'static>,
    f_esc_status: Finder<'static>,
    /// Pusher: `pusher:ping`s received (each answered `pusher:pong`).
    pusher_pings: u64,
    trouble: Trouble,
    dirty: Vec<usize>,
    to_close: Vec<usize>,
    pending: usize,
    open: usize,
    connect_hist: Histogram,
    rng: u64,
    frames_in: u64,
    bytes_in: u64,
    dialect: Dialect,
    /// Socket.IO: the CONNECT packet up to the user number,
    /// `40{"apiKey":KEY,"userId":"u`.
    sio_hello: Vec<u8>,
    /// Socket.IO: where a CONNECT packet is put together.
    sio_buf: Vec<u8>,
}

struct Net {
    poll: Poll,
    events: Option<Events>,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    addr: SocketAddr,
    key: String,
    /// `--dialect pusher`: `/app/{appKey}` (the project id is the app key)
    /// and how many leading connections (the fan-out's publishers) stay native.
    pusher_path: String,
    native_below: usize,
    cx: Cx,
}

const SCRATCH: usize = 256 * 1024;

fn digits(s: &[u8]) -> u64 {
    let mut v = 0u64;
    for &b in s.iter().take(20) {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add((b - b'0') as u64);
    }
    v
}

fn after<'a>(f: &Finder<'_>, p: &'a [u8]) -> &'a [u8] {
    match f.find(p) {
        Some(i) => &p[i + f.needle().len()..],
        None => &[],
    }
}

fn quoted(s: &[u8]) -> &[u8] {
    &s[..memchr::memchr(b'"', s).unwrap_or(s.len())]
}

impl Cx {
    fn classify<'p>(&self, p: &'p [u8]) -> In<'p> {
        let name: &[u8] =
            if p.starts_with(b"{\"type\":\"message\",") { b"message" } else { quoted(after(&self.f_type, p)) };
        match name {
            b"message" => In::Message { ts: digits(after(&self.f_content, p)), seq: digits(after(&self.f_seq, p)) },
            b"message_id_mapping" => In::Ack { ts: digits(after(&self.f_temp, p)) },
            b"connected" => In::Connected,
            b"joined" => In::Joined,
            b"error" => In::Error { code: quoted(after(&self.f_code, p)), event: quoted(after(&self.f_event, p)) },
            kind => In::Other { kind },
        }
    }

    fn mark_dirty(&mut self, i: usize, conn: &mut Conn) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(i);
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_le_bytes()
    }

    fn count_error(&mut self, p: &[u8]) {
        let code = String::from_utf8_lossy(quoted(after(&self.f_code, p))).to_string();
        self.count_error_code(code, p);
    }

    /// Counts one error frame `p` under `code` (`error_CODE` in the RESULT line).
    fn count_error_code(&mut self, code: String, p: &[u8]) {
        match self.trouble.error_codes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.trouble.error_codes.push((code, 1)),
        }
        self.trouble.note(format!("error frame: {}", String::from_utf8_lossy(&p[..p.len().min(200)])));
    }

    /// Parses every complete frame in `data` (upgrade response first when
    /// upgrading); returns how many bytes were consumed.
    fn parse(&mut self, i: usize, conn: &mut Conn, data: &[u8], h: &mut impl Handler, now: u64) -> usize {
        if conn.st == St::Http {
            return self.parse_http(i, conn, data, h, now);
        }
        let mut pos = 0;
        if conn.st == St::Upgrading {
            let Some(end) = memchr::memmem::find(data, b"\r\n\r\n") else {
                if data.len() > 16 * 1024 {
                    self.fail(i, conn, "upgrade response too long".into());
                    return data.len();
                }
                return 0;
            };
            if !data.starts_with(b"HTTP/1.1 101") {
                let first = memchr::memchr(b'\r', data).unwrap_or(end).min(120);
                let line = String::from_utf8_lossy(&data[..first]).to_string();
                self.fail(i, conn, format!("upgrade refused: {line}"));
                return data.len();
            }
            conn.st = St::Open;
            pos = end + 4;
        }
        while conn.st == St::Open {
            let rest = &data[pos..];
            if rest.len() < 2 {
                break;
            }
            let (b0, b1) = (rest[0], rest[1]);
            let mut header = 2;
            let mut len = (b1 & 0x7f) as usize;
            if len == 126 {
                if rest.len() < 4 {
                    break;
                }
                len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
                header = 4;
            } else if len == 127 {
                if rest.len() < 10 {
                    break;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                len = u64::from_be_bytes(b) as usize;
                header = 10;
            }
            if b1 & 0x80 != 0 {
                self.fail(i, conn, "server sent a masked frame".into());
                return data.len();
            }
            if rest.len() < header + len {
                break;
            }
            let payload = &rest[header..header + len];
            pos += header + len;
            self.frames_in += 1;
            match b0 & 0x0f {
                0x1 if self.dialect == Dialect::SocketIo => {
                    if !self.sio_packet(i, conn, payload, h, now) {
                        return data.len();
                    }
                }
                0x1 if matches!(conn.dial, Dial::Pusher) => self.pusher_message(i, conn, payload, h, now),
                0x1 => {
                    let frame = self.classify(payload);
                    match frame {
                        In::Connected if !conn.hello => {
                            conn.hello = true;
                            self.pending -= 1;
                            self.open += 1;
                            self.connect_hist.record(now.saturating_sub(conn.t0));
                        }
                        In::Error { .. } => self.count_error(payload),
                        _ => {}
                    }
                    h.frame(i, frame, now);
                }
                0x9 => {
                    // Ping: answer with a masked pong carrying the same payload.
                    let mask = self.next_mask();
                    push_frame(&mut conn.out, 0x8A, payload, mask);
                    self.mark_dirty(i, conn);
                }
                0x8 => {
                    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    match self.trouble.close_codes.iter_mut().find(|(c, _)| *c == code) {
                        Some((_, n)) => *n += 1,
                        None => self.trouble.close_codes.push((code, 1)),
                    }
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).to_string();
                    self.fail(i, conn, format!("server closed conn {i} with {code} {reason:?}"));
                    return data.len();
                }
                0xA => {}
                op => {
                    self.fail(i, conn, format!("unexpected opcode {op:#x}"));
                    return data.len();
                }
            }
        }
        pos
    }

    /// One Socket.IO text packet (Engine.IO packet type first). Returns false
    /// when it closed the connection.
    fn sio_packet(&mut self, i: usize, conn: &mut Conn, p: &[u8], h: &mut impl Handler, now: u64) -> bool {
        if p.starts_with(b"42[\"") {
            let frame = self.classify_sio(p);
            if let In::Error { .. } = frame {
                self.count_error(p);
            }
            h.frame(i, frame, now);
        } else if p == b"2" {
            // Engine.IO ping: pong.
            let mask = self.next_mask();
            push_frame(&mut conn.out, 0x81, b"3", mask);
            self.mark_dirty(i, conn);
        } else if p.starts_with(b"0{") {
            // Engine.IO open: CONNECT to `/` as user `u{i}`.
            if !conn.hello {
                let mut buf = std::mem::take(&mut self.sio_buf);
                buf.clear();
                buf.extend_from_slice(&self.sio_hello);
                put_u64(&mut buf, i as u64);
                buf.extend_from_slice(b"\"}");
                let mask = self.next_mask();
                push_frame(&mut conn.out, 0x81, &buf, mask);
                self.sio_buf = buf;
                self.mark_dirty(i, conn);
            }
        } else if p.starts_with(b"40") {
            if !conn.hello {
                conn.hello = true;
                self.pending -= 1;
                self.open += 1;
                self.connect_hist.record(now.saturating_sub(conn.t0));
            }
            h.frame(i, In::Connected, now);
        } else if p.starts_with(b"44") || p.starts_with(b"41") || p == b"1" {
            let what = match &p[..p.len().min(2)] {
                b"44" => "CONNECT_ERROR",
                b"41" => "DISCONNECT",
                _ => "Engine.IO close",
            };
            let text = String::from_utf8_lossy(&p[..p.len().min(200)]).to_string();
            self.fail(i, conn, format!("conn {i}: server sent {what}: {text}"));
            return false;
        } else {
            h.frame(i, In::Other { kind: &p[..p.len().min(2)] }, now);
        }
        true
    }

    /// One Pusher message `{"channel"?,"data","event"}` (the hub's keys are
    /// sorted, so `event` comes last; a leading `event` is recognised too).
    fn pusher_message(&mut self, i: usize, conn: &mut Conn, p: &[u8], h: &mut impl Handler, now: u64) {
        let name: &[u8] = if p.ends_with(b",\"event\":\"message\"}") || p.starts_with(b"{\"event\":\"message\",") {
            b"message"
        } else {
            quoted(after(&self.f_event, p))
        };
        let frame = match name {
            b"message" => {
                In::Message { ts: digits(after(&self.f_esc_content, p)), seq: digits(after(&self.f_esc_seq, p)) }
            }
            b"pusher_internal:subscription_succeeded" => In::Joined,
            b"pusher:connection_established" => {
                if !conn.hello {
                    conn.hello = true;
                    self.pending -= 1;
                    self.open += 1;
                    self.connect_hist.record(now.saturating_sub(conn.t0));
                }
                In::Connected
            }
            b"pusher:ping" => {
                self.pusher_pings += 1;
                let mask = self.next_mask();
                push_frame(&mut conn.out, 0x81, br#"{"event":"pusher:pong","data":{}}"#, mask);
                self.mark_dirty(i, conn);
                return;
            }
            b"pusher:error" | b"pusher:subscription_error" => {
                let code = if name == b"pusher:error" {
                    let c = after(&self.f_num_code, p);
                    let end = c.iter().position(|b| !b.is_ascii_alphanumeric()).unwrap_or(c.len());
                    format!("pusher_{}", String::from_utf8_lossy(&c[..end]))
                } else {
                    format!("subscription_{}", digits(after(&self.f_esc_status, p)))
                };
                self.count_error_code(code, p);
                In::Error { code: b"", event: b"" }
            }
            kind => In::Other { kind },
        };
        h.frame(i, frame, now);
    }

    /// A Socket.IO EVENT packet `42["name",{...}]`, classified like a native frame.
    fn classify_sio<'p>(&self, p: &'p [u8]) -> In<'p> {
        let name: &[u8] = if p.starts_with(b"42[\"message\",") { b"message" } else { quoted(&p[4..]) };
        match name {
            b"message" => In::Message { ts: digits(after(&self.f_content, p)), seq: digits(after(&self.f_seq, p)) },
            b"message_id_mapping" => In::Ack { ts: digits(after(&self.f_temp, p)) },
            b"thread_joined" => In::Joined,
            b"error" => In::Error { code: quoted(after(&self.f_code, p)), event: quoted(after(&self.f_event, p)) },
            kind => In::Other { kind },
        }
    }

    /// Hands every complete HTTP response in `data` to the handler; returns
    /// how many bytes were consumed. Bodies must carry `Content-Length`.
    fn parse_http(&mut self, i: usize, conn: &mut Conn, data: &[u8], h: &mut impl Handler, now: u64) -> usize {
        let mut pos = 0;
        while conn.st == St::Http {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let head = match resp.parse(&data[pos..]) {
                Ok(httparse::Status::Complete(head)) => head,
                Ok(httparse::Status::Partial) => break,
                Err(e) => {
                    self.fail(i, conn, format!("conn {i}: bad HTTP response: {e}"));
                    return data.len();
                }
            };
            let len = resp
                .headers
                .iter()
                .find(|hd| hd.name.eq_ignore_ascii_case("content-length"))
                .and_then(|hd| std::str::from_utf8(hd.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if data.len() - pos < head + len {
                break;
            }
            let status = resp.code.unwrap_or(0);
            self.frames_in += 1;
            h.http(i, status, &data[pos + head..pos + head + len], now);
            pos += head + len;
        }
        pos
    }

    fn fail(&mut self, i: usize, conn: &mut Conn, why: String) {
        if conn.st == St::Closed {
            return;
        }
        if !conn.hello {
            self.pending = self.pending.saturating_sub(1);
            self.trouble.failed_connects += 1;
        } else {
            self.open -= 1;
            self.trouble.closed += 1;
        }
        conn.st = St::Closed;
        self.trouble.note(why);
        self.to_close.push(i);
    }
}

/// Appends one final, masked client frame with opcode byte `b0`.
fn push_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.push(b0);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (j, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[j & 3];
    }
}

impl Net {
    fn new(addr: SocketAddr, key: String, start: Instant, dialect: Dialect) -> io::Result<Net> {
        let sio_hello = format!(r#"40{{"apiKey":{},"userId":"u"#, serde_json::Value::from(key.as_str())).into_bytes();
        Ok(Net {
            poll: Poll::new()?,
            events: Some(Events::with_capacity(4096)),
            conns: Vec::new(),
            scratch: vec![0u8; SCRATCH],
            addr,
            key,
            pusher_path: String::new(),
            native_below: 0,
            cx: Cx {
                start,
                f_type: Finder::new(b"\"type\":\"").into_owned(),
                f_content: Finder::new(b"\"content\":\"").into_owned(),
                f_temp: Finder::new(b"\"tempId\":\"").into_owned(),
                f_seq: Finder::new(b"\"seq\":").into_owned(),
                f_code: Finder::new(b"\"code\":\"").into_owned(),
                f_event: Finder::new(b"\"event\":\"").into_owned(),
                f_esc_content: Finder::new(br#"\"content\":\""#).into_owned(),
                f_esc_seq: Finder::new(br#"\"seq\":"#).into_owned(),
                f_num_code: Finder::new(b"\"code\":").into_owned(),
                f_esc_status: Finder::new(br#"\"status\":"#).into_owned(),
                pusher_pings: 0,
                trouble: Trouble::default(),
                dirty: Vec::new(),
                to_close: Vec::new(),
                pending: 0,
                open: 0,
                connect_hist: Histogram::new(),
                rng: 0x9E37_79B9_7F4A_7C15 ^ (start.elapsed().as_nanos() as u64 | 1),
                frames_in: 0,
                bytes_in: 0,
                dialect,
                sio_hello,
                sio_buf: Vec::new(),
            },
        })
    }

    fn now(&self) -> u64 {
        self.cx.start.elapsed().as_nanos() as u64
    }

    /// Starts one more connection (user `u{index}`, or a Pusher subscriber
    /// past `native_below` with `--dialect pusher`); returns its index.
    fn connect_one(&mut self) -> usize {
        if self.cx.dialect == Dialect::Pusher && self.conns.len() >= self.native_below {
            self.connect(Dial::Pusher)
        } else {
            self.connect(Dial::Ws)
        }
    }

    /// Whether connection `i` speaks Pusher.
    fn is_pusher(&self, i: usize) -> bool {
        matches!(self.conns[i].dial, Dial::Pusher)
    }

    /// Starts one more connection of the given kind; returns its index.
    fn connect(&mut self, dial: Dial) -> usize {
        let i = self.conns.len();
        let t0 = self.now();
        let mut conn = Conn {
            sock: None,
            st: St::Connecting,
            dial,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            dirty: false,
            hello: false,
            t0,
        };
        self.cx.pending += 1;
        match TcpStream::connect(self.addr) {
            Ok(mut sock) => {
                let _ = sock.set_nodelay(true);
                match self.poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE) {
                    Ok(()) => conn.sock = Some(sock),
                    Err(e) => self.cx.fail(i, &mut conn, format!("register: {e}")),
                }
            }
            Err(e) => self.cx.fail(i, &mut conn, format!("connect: {e}")),
        }
        self.conns.push(conn);
        i
    }

    /// Opens connections until `n` exist, at most `concurrency` handshakes at a
    /// time, and waits until each got `connected` or failed. Returns the time taken.
    fn open_all(
        &mut self,
        n: usize,
        concurrency: usize,
        h: &mut impl Handler,
        limit: Duration,
    ) -> Result<Duration, String> {
        let began = Instant::now();
        while self.conns.len() < n || self.cx.pending > 0 {
            while self.conns.len() < n && self.cx.pending < concurrency {
                self.connect_one();
            }
            self.turn(h, Some(Duration::from_millis(5))).map_err(|e| e.to_string())?;
            if began.elapsed() > limit {
                return Err(format!(
                    "only {} of {n} connections upgraded after {:?} ({} pending); {}",
                    self.cx.open,
                    limit,
                    self.cx.pending,
                    self.cx.trouble.samples.join("; ")
                ));
            }
        }
        Ok(began.elapsed())
    }

    /// Queues a masked text frame on connection `i`; false if it is not open.
    fn send_text(&mut self, i: usize, payload: &[u8]) -> bool {
        let mask = self.cx.next_mask();
        let conn = &mut self.conns[i];
        if conn.st != St::Open {
            return false;
        }
        push_frame(&mut conn.out, 0x81, payload, mask);
        self.cx.mark_dirty(i, conn);
        true
    }

    /// Queues raw bytes (an HTTP request) on connection `i`; false if it is
    /// not a connected HTTP connection.
    fn send_raw(&mut self, i: usize, bytes: &[u8]) -> bool {
        let conn = &mut self.conns[i];
        if conn.st != St::Http {
            return false;
        }
        conn.out.extend_from_slice(bytes);
        self.cx.mark_dirty(i, conn);
        true
    }

    /// Bytes queued on connection `i` that the socket has not taken yet.
    fn queued(&self, i: usize) -> usize {
        let conn = &self.conns[i];
        conn.out.len() - conn.out_pos
    }

    fn flush(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        let Some(sock) = conn.sock.as_mut() else { return };
        while conn.out_pos < conn.out.len() {
            match sock.write(&conn.out[conn.out_pos..]) {
                Ok(0) => {
                    self.cx.fail(i, conn, "write returned 0".into());
                    return;
                }
                Ok(n) => conn.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.cx.fail(i, conn, format!("write: {e}"));
                    return;
                }
            }
        }
        conn.out.clear();
        conn.out_pos = 0;
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.cx.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            self.flush(i);
        }
        dirty.clear();
        if self.cx.dirty.is_empty() {
            self.cx.dirty = dirty;
        }
        for i in std::mem::take(&mut self.cx.to_close) {
            self.drop_socket(i);
        }
    }

    /// Drops connection `i` for good: its socket (RST) and its buffers.
    fn forget(&mut self, i: usize) {
        self.drop_socket(i);
        let conn = &mut self.conns[i];
        if conn.st != St::Closed {
            if conn.hello {
                self.cx.open -= 1;
            } else {
                self.cx.pending = self.cx.pending.saturating_sub(1);
            }
            conn.st = St::Closed;
        }
        conn.inbuf = Vec::new();
        conn.out = Vec::new();
        conn.out_pos = 0;
    }

    fn drop_socket(&mut self, i: usize) {
        if let Some(mut sock) = self.conns[i].sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
            linger_zero(sock.as_raw_fd());
        }
    }

    fn on_writable(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.st == St::Connecting {
            let Some(sock) = conn.sock.as_ref() else { return };
            if let Ok(Some(e)) | Err(e) = sock.take_error() {
                self.cx.fail(i, conn, format!("connect: {e}"));
                self.flush_dirty();
                return;
            }
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.cx.fail(i, conn, format!("connect: {e}"));
                    return;
                }
            }
            let (path, query) = match &conn.dial {
                Dial::Http => {
                    conn.st = St::Http;
                    conn.hello = true;
                    self.cx.pending -= 1;
                    self.cx.open += 1;
                    self.cx.connect_hist.record((self.cx.start.elapsed().as_nanos() as u64).saturating_sub(conn.t0));
                    return;
                }
                Dial::Ws if self.cx.dialect == Dialect::SocketIo => {
                    ("/socket.io/", "EIO=4&transport=websocket".to_string())
                }
                Dial::Ws => ("/", format!("apiKey={}&userId=u{i}", self.key)),
                Dial::WsQuery(q) => ("/", q.clone()),
                Dial::Pusher => (self.pusher_path.as_str(), "protocol=7&client=js&version=8.4.0".to_string()),
            };
            conn.st = St::Upgrading;
            let _ = write!(
                ByteWriter(&mut conn.out),
                "GET {path}?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                self.addr
            );
        }
        self.flush(i);
    }

    fn on_readable(&mut self, i: usize, h: &mut impl Handler, read_closed: bool) {
        let Net { conns, scratch, cx, .. } = self;
        let conn = &mut conns[i];
        loop {
            if conn.st == St::Closed || conn.st == St::Connecting {
                return;
            }
            let Some(sock) = conn.sock.as_mut() else { return };
            let n = match sock.read(scratch) {
                Ok(0) => {
                    cx.fail(i, conn, format!("conn {i}: EOF from server"));
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    cx.fail(i, conn, format!("conn {i}: read: {e}"));
                    return;
                }
            };
            cx.bytes_in += n as u64;
            let now = cx.start.elapsed().as_nanos() as u64;
            let mut buf = std::mem::take(&mut conn.inbuf);
            if buf.is_empty() {
                let used = cx.parse(i, conn, &scratch[..n], h, now);
                buf.extend_from_slice(&scratch[used..n]);
            } else {
                buf.extend_from_slice(&scratch[..n]);
                let used = cx.parse(i, conn, &buf, h, now);
                buf.drain(..used);
            }
            if conn.st == St::Closed {
                buf.clear();
            }
            conn.inbuf = buf;
            // Edge-triggered: a short read drained the socket, and new data
            // raises a new event (unless the peer's FIN is already in).
            if n < scratch.len() && !read_closed {
                return;
            }
        }
    }

    /// One poll: handles every ready socket, then flushes what was queued.
    /// Returns the number of events.
    fn turn(&mut self, h: &mut impl Handler, timeout: Option<Duration>) -> io::Result<usize> {
        let mut events = self.events.take().unwrap_or_else(|| Events::with_capacity(4096));
        if let Err(e) = self.poll.poll(&mut events, timeout) {
            self.events = Some(events);
            return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
        }
        let mut count = 0;
        for ev in events.iter() {
            count += 1;
            let i = ev.token().0;
            if ev.is_writable() {
                self.on_writable(i);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                self.on_readable(i, h, ev.is_read_closed() || ev.is_error());
            }
        }
        self.events = Some(events);
        self.flush_dirty();
        Ok(count)
    }

    /// Turns until nothing arrives for `quiet` (at most `limit`).
    fn settle(&mut self, h: &mut impl Handler, quiet: Duration, limit: Duration) -> io::Result<()> {
        let began = Instant::now();
        let mut last = Instant::now();
        while last.elapsed() < quiet && began.elapsed() < limit {
            if self.turn(h, Some(quiet / 4))? > 0 {
                last = Instant::now();
            }
        }
        Ok(())
    }

    /// Closes every socket with RST (no TIME_WAIT left behind).
    fn close_all(&mut self) {
        for i in 0..self.conns.len() {
            self.drop_socket(i);
        }
    }
}

/// `write!` into a byte vector.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes `v` as exactly 20 zero-padded decimal digits.
fn put_digits20(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [b'0'; 20];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&d);
}

fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 20];
    let mut n = 0;
    loop {
        d[19 - n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&d[20 - n..]);
}

// ---------------------------------------------------------------- result line

struct ResultLine(String);

impl ResultLine {
    fn new(scenario: &str, target: &Target) -> ResultLine {
        ResultLine(format!("RESULT scenario={scenario} target={}", target.label))
    }

    fn kv(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, " {k}={v}");
        self
    }

    fn print(&self) {
        println!("{}", self.0);
    }
}

// ---------------------------------------------------------------- traffic (fanout, rooms, ingest)

#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Latency from send to each member's receipt of the broadcast.
    Delivery,
    /// Latency from send to the sender's `message_id_mapping`.
    Ack,
}

struct Publisher {
    conn: usize,
    rooms: Vec<u32>,
    next_room: usize,
    inflight: u32,
    counter: u64,
}

/// One run of message traffic: rooms with joined connections and publishers.
struct Traffic {
    name: &'static str,
    measure: Measure,
    dialect: Dialect,
    room_names: Vec<String>,
    /// Connections joined to each room (the expected deliveries per message).
    room_members: Vec<u64>,
    /// Rooms each connection joins.
    joins: Vec<Vec<u32>>,
    pubs: Vec<Publisher>,
    pub_of_conn: Vec<u32>,
    size: usize,
    window: u32,
    rate: f64,
    check_seq: bool,
    last_seq: Vec<u64>,
    // phase
    joined: usize,
    warm: u64,
    end: u64,
    sending: bool,
    ready: Vec<u32>,
    msg: Vec<u8>,
    // counts
    sent: u64,
    sent_window: u64,
    expected_deliveries: u64,
    deliveries: u64,
    deliveries_window: u64,
    acks: u64,
    acks_window: u64,
    seq_gaps: u64,
    hist: Histogram,
    tick: Histogram,
    tick_sent: u64,
    tick_recv: u64,
}

impl Handler for Traffic {
    fn frame(&mut self, conn: usize, frame: In<'_>, now: u64) {
        match frame {
            In::Joined => self.joined += 1,
            In::Message { ts, seq } => {
                self.deliveries += 1;
                if self.check_seq {
                    let last = &mut self.last_seq[conn];
                    if *last != 0 && seq != *last + 1 {
                        self.seq_gaps += 1;
                    }
                    *last = seq;
                }
                if self.measure == Measure::Delivery && now >= self.warm && now <= self.end {
                    self.deliveries_window += 1;
                    self.tick_recv += 1;
                    if ts >= self.warm {
                        let lat = now.saturating_sub(ts);
                        self.hist.record(lat);
                        self.tick.record(lat);
                    }
                }
            }
            In::Ack { ts } => {
                self.acks += 1;
                self.release(conn);
                if self.measure == Measure::Ack && now >= self.warm && now <= self.end {
                    self.acks_window += 1;
                    self.tick_recv += 1;
                    if ts >= self.warm {
                        let lat = now.saturating_sub(ts);
                        self.hist.record(lat);
                        self.tick.record(lat);
                    }
                }
            }
            // A refused message gets no ack: free its slot so the loop goes on.
            In::Error { .. } => self.release(conn),
            In::Connected | In::Other { .. } => {}
        }
    }
}

impl Traffic {
    fn release(&mut self, conn: usize) {
        let p = self.pub_of_conn[conn];
        if p == u32::MAX {
            return;
        }
        let publisher = &mut self.pubs[p as usize];
        publisher.inflight = publisher.inflight.saturating_sub(1);
        if self.rate == 0.0 && self.sending {
            self.ready.push(p);
        }
    }

    fn inflight(&self) -> u64 {
        self.pubs.iter().map(|p| p.inflight as u64).sum()
    }

    /// Sends one message from publisher `p` to its next room.
    fn send(&mut self, net: &mut Net, p: usize, now: u64) {
        let publisher = &mut self.pubs[p];
        let room = publisher.rooms[publisher.next_room % publisher.rooms.len()] as usize;
        publisher.next_room += 1;
        publisher.counter += 1;
        let counter = publisher.counter;
        let conn = publisher.conn;
        let msg = &mut self.msg;
        msg.clear();
        if self.dialect == Dialect::SocketIo {
            msg.extend_from_slice(b"42[\"message_send\",{\"threadId\":\"");
            msg.extend_from_slice(self.room_names[room].as_bytes());
            msg.extend_from_slice(b"\",\"tempId\":\"");
            put_digits20(msg, now);
            msg.push(b'-');
            put_u64(msg, counter);
            msg.extend_from_slice(b"\",\"content\":\"");
            put_digits20(msg, now);
            msg.resize(msg.len() + self.size - 20, b'.');
            msg.extend_from_slice(b"\"}]");
        } else {
            msg.extend_from_slice(b"{\"type\":\"message\",\"room\":\"");
            msg.extend_from_slice(self.room_names[room].as_bytes());
            msg.extend_from_slice(b"\",\"content\":\"");
            put_digits20(msg, now);
            msg.resize(msg.len() + self.size - 20, b'.');
            msg.extend_from_slice(b"\",\"tempId\":\"");
            put_digits20(msg, now);
            msg.push(b'-');
            put_u64(msg, counter);
            msg.extend_from_slice(b"\"}");
        }
        if net.send_text(conn, &self.msg) {
            self.pubs[p].inflight += 1;
            self.sent += 1;
            self.tick_sent += 1;
            if now >= self.warm {
                self.sent_window += 1;
            }
            self.expected_deliveries += self.room_members[room];
        }
    }
}

struct TrafficPlan {
    name: &'static str,
    measure: Measure,
    room_names: Vec<String>,
    /// (rooms joined, publishes?) for each connection.
    conns: Vec<(Vec<u32>, bool)>,
    rate: f64,
    window: usize,
    check_seq: bool,
}

impl Traffic {
    /// The traffic of `plan` for connections `0..plan.conns.len()`, not yet sending.
    fn new(o: &Opts, plan: TrafficPlan) -> Traffic {
        let n = plan.conns.len();
        let rooms = plan.room_names.len();
        let mut room_members = vec![0u64; rooms];
        let mut pubs = Vec::new();
        let mut pub_of_conn = vec![u32::MAX; n];
        let mut joins = Vec::with_capacity(n);
        for (i, (rooms, publishes)) in plan.conns.into_iter().enumerate() {
            for &r in &rooms {
                room_members[r as usize] += 1;
            }
            if publishes {
                pub_of_conn[i] = pubs.len() as u32;
                pubs.push(Publisher { conn: i, rooms: rooms.clone(), next_room: 0, inflight: 0, counter: 0 });
            }
            joins.push(rooms);
        }
        Traffic {
            name: plan.name,
            measure: plan.measure,
            dialect: o.dialect,
            room_names: plan.room_names,
            room_members,
            joins,
            pubs,
            pub_of_conn,
            size: o.size,
            window: plan.window.max(1) as u32,
            rate: plan.rate,
            check_seq: plan.check_seq,
            last_seq: vec![0; n],
            joined: 0,
            warm: u64::MAX,
            end: u64::MAX,
            sending: false,
            ready: Vec::new(),
            msg: Vec::with_capacity(o.size + 256),
            sent: 0,
            sent_window: 0,
            expected_deliveries: 0,
            deliveries: 0,
            deliveries_window: 0,
            acks: 0,
            acks_window: 0,
            seq_gaps: 0,
            hist: Histogram::new(),
            tick: Histogram::new(),
            tick_sent: 0,
            tick_recv: 0,
        }
    }

    /// Opens this traffic's connections (the first ones of `net`), joins each
    /// to its rooms and lets the join chatter (user_joined, members lists)
    /// pass. Returns the connect time and the number of joins.
    fn connect_and_join(&mut self, net: &mut Net, o: &Opts) -> Result<(Duration, usize), String> {
        let n = self.joins.len();
        let connect_time = net.open_all(n, o.concurrency, self, Duration::from_secs(120))?;
        if net.cx.open < n {
            return Err(format!(
                "{} of {n} connections failed: {}",
                n - net.cx.open,
                net.cx.trouble.samples.join("; ")
            ));
        }
        let mut want_joined = 0;
        let mut join_msg = Vec::new();
        for i in 0..n {
            for &r in &self.joins[i] {
                join_msg.clear();
                let room = &self.room_names[r as usize];
                let _ = if self.dialect == Dialect::SocketIo {
                    write!(ByteWriter(&mut join_msg), r#"42["join_thread",{{"threadId":"{room}"}}]"#)
                } else if net.is_pusher(i) {
                    write!(ByteWriter(&mut join_msg), r#"{{"event":"pusher:subscribe","data":{{"channel":"{room}"}}}}"#)
                } else {
                    write!(ByteWriter(&mut join_msg), r#"{{"type":"join","room":"{room}"}}"#)
                };
                net.send_text(i, &join_msg);
                want_joined += 1;
            }
            if i % 256 == 255 {
                net.flush_dirty();
            }
        }
        net.flush_dirty();
        let began = Instant::now();
        while self.joined < want_joined {
            net.turn(self, Some(Duration::from_millis(10))).map_err(|e| e.to_string())?;
            if began.elapsed() > Duration::from_secs(120) || net.cx.open < n {
                return Err(format!(
                    "{} of {want_joined} joins answered; {}",
                    self.joined,
                    net.cx.trouble.samples.join("; ")
                ));
            }
        }
        net.settle(self, Duration::from_millis(300), Duration::from_secs(30)).map_err(|e| e.to_string())?;
        Ok((connect_time, want_joined))
    }

    /// With `--rate`: sends every message due by `now` (at most 1000 at once),
    /// round-robin over the publishers; returns how long until the next is due.
    fn send_due(&mut self, net: &mut Net, pace: &mut Pace, now: u64) -> Duration {
        let mut burst = 0;
        while pace.next_due as u64 <= now && burst < 1000 {
            pace.max_lag = pace.max_lag.max(now - pace.next_due as u64);
            let p = pace.rr % self.pubs.len();
            self.send(net, p, now);
            pace.rr += 1;
            pace.next_due += pace.interval;
            burst += 1;
        }
        let wait = (pace.next_due as u64).saturating_sub(net.now());
        Duration::from_nanos(wait.min(100_000_000))
    }
}

/// The schedule of paced (`--rate`) sends.
struct Pace {
    /// When the next message is due (ns since the generator's start).
    next_due: f64,
    interval: f64,
    rr: usize,
    /// The most a send was late.
    max_lag: u64,
}

impl Pace {
    /// `rate` messages per second in all, from `start`.
    fn new(rate: f64, start: u64) -> Pace {
        Pace { next_due: start as f64, interval: 1e9 / rate, rr: 0, max_lag: 0 }
    }
}

/// Rooms `r0`, `r1`, … for the traffic scenarios.
fn room_names(n: usize) -> Vec<String> {
    (0..n).map(|r| format!("r{r}")).collect()
}

fn run_traffic(o: &Opts, plan: TrafficPlan) -> Result<(), String> {
    let n = plan.conns.len();
    let mut target = Target::start(o, Some(n))?;
    let setup_began = Instant::now();
    let key = setup_project(target.addr, &plan.room_names)?;
    let start = Instant::now();
    // Pusher: the publishers (the plan's first connections) stay native.
    let native_below = plan.conns.iter().take_while(|(_, publishes)| *publishes).count();
    if o.dialect == Dialect::Pusher && plan.conns.iter().skip(native_below).any(|(_, publishes)| *publishes) {
        return Err("--dialect pusher needs the publishers first (fanout)".into());
    }
    let pusher_path =
        if o.dialect == Dialect::Pusher { format!("/app/{}", project_id(target.addr, &key)?) } else { String::new() };
    let mut net = Net::new(target.addr, key, start, o.dialect).map_err(|e| e.to_string())?;
    net.pusher_path = pusher_path;
    net.native_below = native_below;
    let mut t = Traffic::new(o, plan);
    let (connect_time, want_joined) = t.connect_and_join(&mut net, o)?;
    eprintln!(
        "[{}] setup: {n} connections in {:.2}s, {want_joined} joins, total setup {:.2}s",
        t.name,
        connect_time.as_secs_f64(),
        setup_began.elapsed().as_secs_f64()
    );

    // Run.
    let metrics0 = fetch_metrics(target.addr);
    let run_start = net.now();
    t.warm = run_start + (o.warmup * 1e9) as u64;
    t.end = t.warm + (o.duration * 1e9) as u64;
    t.sending = true;
    let publishers = t.pubs.len();
    let mut pace = Pace::new(t.rate * publishers as f64, run_start);
    if t.rate == 0.0 {
        for _ in 0..t.window {
            t.ready.extend(0..publishers as u32);
        }
    }
    let mut cpu0: Option<CpuSample> = None;
    let mut frames0 = 0;
    let mut bytes0 = 0;
    let mut next_tick = run_start + 1_000_000_000;
    loop {
        let now = net.now();
        if cpu0.is_none() && now >= t.warm {
            cpu0 = Some(CpuSample::take(target.pid));
            frames0 = net.cx.frames_in;
            bytes0 = net.cx.bytes_in;
        }
        if now >= t.end {
            break;
        }
        let timeout = if t.rate > 0.0 {
            t.send_due(&mut net, &mut pace, now)
        } else {
            while let Some(p) = t.ready.pop() {
                t.send(&mut net, p as usize, now);
            }
            Duration::from_millis(100)
        };
        net.flush_dirty();
        net.turn(&mut t, Some(timeout)).map_err(|e| e.to_string())?;
        if now >= next_tick {
            if !o.quiet {
                eprintln!(
                    "[{}] t={:>5.1}s sent={} recv={} p50_us={} p99_us={} max_us={} open={}",
                    t.name,
                    (now - run_start) as f64 / 1e9,
                    t.tick_sent,
                    t.tick_recv,
                    us(t.tick.quantile(0.5)),
                    us(t.tick.quantile(0.99)),
                    us(t.tick.max),
                    net.cx.open
                );
            }
            t.tick.clear();
            t.tick_sent = 0;
            t.tick_recv = 0;
            next_tick += 1_000_000_000;
        }
        if let Some(status) = target.died() {
            return Err(format!("the hub exited during the run: {status}"));
        }
    }
    let cpu1 = CpuSample::take(target.pid);
    let metrics1 = fetch_metrics(target.addr);
    let frames_window = net.cx.frames_in - frames0;
    let bytes_window = net.cx.bytes_in - bytes0;
    t.sending = false;
    t.ready.clear();

    // Drain: wait for outstanding acks and deliveries (at most 5 s).
    let drain_began = Instant::now();
    while drain_began.elapsed() < Duration::from_secs(5)
        && (t.inflight() > 0 || t.deliveries < t.expected_deliveries)
        && net.cx.open > 0
    {
        net.turn(&mut t, Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
    }
    let secs = o.duration;
    let mut line = ResultLine::new(t.name, &target);
    if o.dialect != Dialect::Native {
        line.kv("dialect", o.dialect.name());
    }
    if o.dialect == Dialect::Pusher {
        line.kv("pusher_subscribers", n - native_below);
    }
    match t.name {
        "fanout" => {
            line.kv("members", n).kv("publishers", publishers);
        }
        "rooms" => {
            line.kv("connections", n).kv("rooms", t.room_names.len()).kv("room_size", n / t.room_names.len());
        }
        _ => {
            line.kv("rooms", t.room_names.len()).kv("publishers", publishers);
        }
    }
    line.kv("rate", if t.rate > 0.0 { format!("{}", t.rate) } else { format!("closed(window={})", t.window) })
        .kv("size", o.size)
        .kv("duration_s", secs)
        .kv("sent_per_s", format!("{:.0}", t.sent_window as f64 / secs));
    if t.measure == Measure::Delivery {
        line.kv("delivered_per_s", format!("{:.0}", t.deliveries_window as f64 / secs));
    } else {
        line.kv("stored_per_s", format!("{:.0}", t.acks_window as f64 / secs));
    }
    line.kv("p50_us", us(t.hist.quantile(0.5)))
        .kv("p99_us", us(t.hist.quantile(0.99)))
        .kv("p999_us", us(t.hist.quantile(0.999)))
        .kv("max_us", us(t.hist.max))
        .kv("samples", t.hist.total);
    let per = if t.measure == Measure::Delivery { t.deliveries_window } else { t.acks_window };
    let cpu0 = cpu0.unwrap_or(cpu1);
    if let (Some(a), Some(b)) = (cpu0.server, cpu1.server) {
        let name = if t.measure == Measure::Delivery { "cpu_us_per_delivery" } else { "cpu_us_per_message" };
        line.kv(name, format!("{:.3}", (b - a) / per.max(1) as f64));
    }
    cpu0.report(&cpu1, secs, "", &mut line);
    line.kv("frames_in_per_s", format!("{:.0}", frames_window as f64 / secs))
        .kv("mib_in_per_s", format!("{:.1}", bytes_window as f64 / secs / 1048576.0));
    if t.rate > 0.0 {
        line.kv("max_send_lag_us", us(pace.max_lag));
    }
    let lost = t.expected_deliveries.saturating_sub(t.deliveries);
    line.kv("lost", lost).kv("unacked", t.inflight());
    if t.check_seq {
        line.kv("seq_gaps", t.seq_gaps);
    }
    if o.dialect == Dialect::Pusher {
        line.kv("pusher_pings", net.cx.pusher_pings);
    }
    report_hub_metrics(metrics0.as_deref(), metrics1.as_deref(), "", &mut line);
    line.0.push(' ');
    line.0.push_str(&net.cx.trouble.summary());
    line.print();
    report_samples(&net);
    net.close_all();
    target.stop();
    Ok(())
}

/// The hub's `/metrics` text (None for servers without it).
fn fetch_metrics(addr: SocketAddr) -> Option<String> {
    let mut http = Http::connect(addr).ok()?;
    match http.request("GET", "/metrics", None, "") {
        Ok((200, text)) => Some(text),
        _ => None,
    }
}

/// One cumulative duration histogram from `/metrics`: (count, sum in
/// seconds, cumulative count per upper bound in seconds).
type PromHistogram = (f64, f64, Vec<(f64, f64)>);

fn parse_histogram(metrics: &str, name: &str) -> Option<PromHistogram> {
    let mut count = None;
    let mut sum = None;
    let mut buckets = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value: f64 = match line.rsplit(' ').next().and_then(|v| v.parse().ok()) {
            Some(v) => v,
            None => continue,
        };
        if rest.starts_with("_count ") {
            count = Some(value);
        } else if rest.starts_with("_sum ") {
            sum = Some(value);
        } else if let Some(bound) = rest.strip_prefix("_bucket{le=\"").and_then(|r| r.split('"').next()) {
            if let Ok(b) = bound.parse::<f64>() {
                buckets.push((b, value));
            }
        }
    }
    Some((count?, sum?, buckets))
}

/// Summarises the hub's SQLite-commit and loop-iteration histograms over the
/// measured run (`before` is the scrape taken just before it): mean, share
/// over 1 ms and 10 ms, and the bucket bound under which the slowest fell.
/// Each name in the RESULT line is preceded by `prefix`.
fn report_hub_metrics(before: Option<&str>, after: Option<&str>, prefix: &str, line: &mut ResultLine) {
    let (Some(before), Some(after)) = (before, after) else { return };
    for (metric, short) in
        [("realtimehub_commit_seconds", "commit"), ("realtimehub_loop_iteration_seconds", "iteration")]
    {
        let (Some((c0, s0, b0)), Some((c1, s1, b1))) =
            (parse_histogram(before, metric), parse_histogram(after, metric))
        else {
            continue;
        };
        let count = c1 - c0;
        if count <= 0.0 {
            continue;
        }
        let at = |bound: f64| -> Option<f64> {
            let a = b1.iter().find(|(b, _)| *b == bound)?.1;
            let z = b0.iter().find(|(b, _)| *b == bound).map_or(0.0, |x| x.1);
            Some(a - z)
        };
        let over =
            |bound: f64| at(bound).map_or_else(|| "?".to_string(), |n| format!("{:.2}", 100.0 * (count - n) / count));
        let max_le = b1
            .iter()
            .map(|(b, _)| *b)
            .find(|&b| at(b).is_some_and(|n| n >= count))
            .map_or_else(|| "inf".to_string(), |b| format!("{}", b * 1e3));
        let mean_us = format!("{:.1}", (s1 - s0) / count * 1e6);
        let span = if prefix.is_empty() {
            "the run".to_string()
        } else {
            format!("the {} phase", prefix.trim_end_matches('_'))
        };
        eprintln!(
            "hub {metric} during {span}: count={count} mean_us={mean_us} over_1ms_pct={} over_10ms_pct={} max_le_ms={max_le}",
            over(0.001),
            over(0.01)
        );
        let short = format!("{prefix}hub_{short}");
        line.kv(&format!("{short}s"), count)
            .kv(&format!("{short}_mean_us"), mean_us)
            .kv(&format!("{short}_over_1ms_pct"), over(0.001))
            .kv(&format!("{short}_over_10ms_pct"), over(0.01))
            .kv(&format!("{short}_max_le_ms"), max_le);
    }
}

fn report_samples(net: &Net) {
    for s in &net.cx.trouble.samples {
        eprintln!("loadgen: {s}");
    }
}

// ---------------------------------------------------------------- idle and connect

/// A handler that ignores traffic (the network layer already counts hellos and errors).
struct Quiet;

impl Handler for Quiet {
    fn frame(&mut self, _conn: usize, _frame: In<'_>, _now: u64) {}
}

fn run_idle(o: &Opts) -> Result<(), String> {
    let n = o.connections.unwrap_or(10_000);
    let mut target = Target::start(o, Some(n))?;
    let key = setup_project(target.addr, &[])?;
    let mut net = Net::new(target.addr, key, Instant::now(), o.dialect).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let before = target.pid.and_then(rss_kib);
    let took = net.open_all(n, o.concurrency, &mut Quiet, Duration::from_secs(120))?;
    // Hold (answering pings), then measure.
    let hold_until = Instant::now() + Duration::from_secs_f64(o.hold);
    while Instant::now() < hold_until {
        net.turn(&mut Quiet, Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
    }
    let after = target.pid.and_then(rss_kib);
    let open = net.cx.open;
    let mut line = ResultLine::new("idle", &target);
    if o.dialect == Dialect::SocketIo {
        line.kv("dialect", "socketio");
    }
    line.kv("connections", n).kv("open", open).kv("connect_s", format!("{:.2}", took.as_secs_f64()));
    match (before, after) {
        (Some(b), Some(a)) => {
            line.kv("rss_before_kib", b)
                .kv("rss_after_kib", a)
                .kv("kib_per_conn", format!("{:.2}", (a as f64 - b as f64) / open.max(1) as f64));
        }
        _ => {
            line.kv("kib_per_conn", "NA(no --pid)");
        }
    }
    line.0.push(' ');
    line.0.push_str(&net.cx.trouble.summary());
    line.print();
    report_samples(&net);
    net.close_all();
    target.stop();
    Ok(())
}

fn run_connect(o: &Opts) -> Result<(), String> {
    let n = o.connections.unwrap_or(2000);
    let mut target = Target::start(o, Some(n))?;
    let key = setup_project(target.addr, &[])?;
    let mut net = Net::new(target.addr, key, Instant::now(), o.dialect).map_err(|e| e.to_string())?;
    let cpu0 = CpuSample::take(target.pid);
    let took = net.open_all(n, o.concurrency, &mut Quiet, Duration::from_secs(120))?;
    let cpu1 = CpuSample::take(target.pid);
    let open = net.cx.open;
    let h = &net.cx.connect_hist;
    let mut line = ResultLine::new("connect", &target);
    if o.dialect == Dialect::SocketIo {
        line.kv("dialect", "socketio");
    }
    line.kv("connections", n)
        .kv("concurrency", o.concurrency)
        .kv("open", open)
        .kv("elapsed_s", format!("{:.3}", took.as_secs_f64()))
        .kv("conns_per_s", format!("{:.0}", open as f64 / took.as_secs_f64()))
        .kv("p50_us", us(h.quantile(0.5)))
        .kv("p99_us", us(h.quantile(0.99)))
        .kv("p999_us", us(h.quantile(0.999)))
        .kv("max_us", us(h.max));
    if let (Some(a), Some(b)) = (cpu0.server, cpu1.server) {
        line.kv("cpu_us_per_conn", format!("{:.1}", (b - a) / open.max(1) as f64));
    }
    cpu0.report(&cpu1, took.as_secs_f64(), "", &mut line);
    line.0.push(' ');
    line.0.push_str(&net.cx.trouble.summary());
    line.print();
    report_samples(&net);
    net.close_all();
    target.stop();
    Ok(())
}

// ---------------------------------------------------------------- abuse

/// Who attacks in the abuse phase (`--attack`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attack {
    Ws,
    Rest,
    Both,
}

/// The WebSocket attacker's events, in the order it cycles through them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Heavy {
    Join,
    History,
    Read,
    Leave,
}

const HEAVY: [Heavy; 4] = [Heavy::Join, Heavy::History, Heavy::Read, Heavy::Leave];

impl Heavy {
    fn of(event: &[u8]) -> Option<Heavy> {
        match event {
            b"join" => Some(Heavy::Join),
            b"history" => Some(Heavy::History),
            b"read" => Some(Heavy::Read),
            b"leave" => Some(Heavy::Leave),
            _ => None,
        }
    }
}

/// REST requests of the attackers: 4 keep-alive connections, one request in
/// flight on each.
const REST_ATTACKERS: usize = 4;
/// The WebSocket attacker keeps at most this many bytes queued in the
/// generator (the kernel's socket buffers hold more) ...
const ATTACK_QUEUE: usize = 64 * 1024;
/// ... and at most this many events unanswered (ten seconds of the hub's
/// default budget: the hub always has a backlog to work through).
const ATTACK_INFLIGHT: usize = 1000;
/// Reconnects per attacker are bounded too (a refused connect is retried after 5 ms).
const MAX_RECONNECTS: u64 = 100_000;
/// `/health` probes: one every 5 ms, pipelined on one keep-alive connection
/// (so a stalled hub does not hide the probes it delays), at most 2,000 unanswered.
const PROBE_EVERY: u64 = 5_000_000;
const PROBE_INFLIGHT: usize = 2000;

/// The heavy WebSocket client: a browser token for the public room `town`
/// only, cycling through `join since:0`, `history limit=1000`, `read` with
/// up to 1,000 ids and `leave`.
struct WsAttacker {
    conn: Option<usize>,
    /// The upgrade query (`token=JWT`).
    query: String,
    frames: [Vec<u8>; 4],
    step: usize,
    /// Events sent on the current connection and not yet answered, oldest first.
    inflight: std::collections::VecDeque<Heavy>,
    sent: [u64; 4],
    answered: [u64; 4],
    refused: [u64; 4],
    errors: [u64; 4],
    /// Messages replayed after a `joined`.
    replayed: u64,
    /// Answers that matched no event in flight (should stay 0).
    unmatched: u64,
    /// Events in flight when the connection closed.
    lost_in_close: u64,
    connects: u64,
    closes: u64,
    next_connect: u64,
    pace: Option<Pace>,
}

impl WsAttacker {
    /// The answer to the oldest event of kind `kind` in flight. A `read` of
    /// ids already read has no answer of its own: an answer to a later event
    /// shows it was handled.
    fn settle(&mut self, kind: Heavy) -> bool {
        while self.inflight.front() == Some(&Heavy::Read) && kind != Heavy::Read {
            self.inflight.pop_front();
            self.answered[Heavy::Read as usize] += 1;
        }
        if self.inflight.front() == Some(&kind) {
            self.inflight.pop_front();
            true
        } else {
            self.unmatched += 1;
            false
        }
    }

    fn frame(&mut self, frame: In<'_>) {
        let kind = match frame {
            In::Joined => Heavy::Join,
            In::Other { kind: b"history" } => Heavy::History,
            In::Other { kind: b"left" } => Heavy::Leave,
            In::Error { code, event } => match Heavy::of(event) {
                Some(kind) => {
                    if self.settle(kind) {
                        let counts = if code == b"rate_limited" { &mut self.refused } else { &mut self.errors };
                        counts[kind as usize] += 1;
                    }
                    return;
                }
                None => {
                    self.unmatched += 1;
                    return;
                }
            },
            In::Message { .. } => {
                self.replayed += 1;
                return;
            }
            _ => return,
        };
        if self.settle(kind) {
            self.answered[kind as usize] += 1;
        }
    }

    /// Counts and forgets a connection the hub closed (or refused).
    fn reap(&mut self, net: &mut Net, now: u64) {
        let Some(c) = self.conn.filter(|&c| net.conns[c].st == St::Closed) else { return };
        if net.conns[c].hello {
            self.closes += 1;
        }
        self.lost_in_close += self.inflight.len() as u64;
        self.inflight.clear();
        net.forget(c);
        self.conn = None;
        self.next_connect = now + 5_000_000;
    }

    /// Connects (again) when closed, then queues events: as fast as the
    /// socket takes them, or at `--attack-rate`.
    fn pump(&mut self, net: &mut Net, now: u64) {
        self.reap(net, now);
        let Some(c) = self.conn else {
            if now >= self.next_connect && self.connects < MAX_RECONNECTS {
                self.conn = Some(net.connect(Dial::WsQuery(self.query.clone())));
                self.connects += 1;
            }
            return;
        };
        if net.conns[c].st != St::Open {
            return;
        }
        loop {
            if net.queued(c) >= ATTACK_QUEUE || self.inflight.len() >= ATTACK_INFLIGHT {
                break;
            }
            if let Some(pace) = self.pace.as_mut() {
                if pace.next_due as u64 > now {
                    break;
                }
                pace.next_due += pace.interval;
            }
            let kind = HEAVY[self.step % HEAVY.len()];
            if !net.send_text(c, &self.frames[kind as usize]) {
                break;
            }
            self.step += 1;
            self.sent[kind as usize] += 1;
            self.inflight.push_back(kind);
        }
    }

    fn stop(&mut self, net: &mut Net) {
        self.reap(net, 0);
        if let Some(c) = self.conn.take() {
            self.lost_in_close += self.inflight.len() as u64;
            self.inflight.clear();
            net.forget(c);
        }
    }
}

/// A REST attacker: `GET /api/v1/rooms/town/messages?limit=1000` in a closed loop.
struct RestAttacker {
    conn: Option<usize>,
    busy: bool,
    next_connect: u64,
}

/// What the REST attackers got.
#[derive(Default)]
struct RestTally {
    sent: u64,
    ok: u64,
    limited: u64,
    other: u64,
    connects: u64,
    closes: u64,
    bytes: u64,
}

/// `GET /health` every 5 ms; latencies go to the phase the probe was sent in.
struct Probe {
    conn: usize,
    sent_at: std::collections::VecDeque<u64>,
    next_due: u64,
    skipped: u64,
    not_ok: u64,
    quiet: Histogram,
    abuse: Histogram,
    tick: Histogram,
}

/// Everything the abuse scenario receives: the quiet room's traffic, the
/// probe and the attackers.
struct Abuse {
    t: Traffic,
    /// Connections `0..quiet_conns` are the quiet room's.
    quiet_conns: usize,
    /// `rate_limited` and other error frames the quiet room's publishers got.
    quiet_refused: u64,
    quiet_errors: u64,
    probe: Probe,
    ws: WsAttacker,
    rest: Vec<RestAttacker>,
    rest_tally: RestTally,
    /// Phase boundaries (ns since the generator's start): quiet [q0, q1), abuse [q1, a1).
    q0: u64,
    q1: u64,
    a1: u64,
}

impl Handler for Abuse {
    fn frame(&mut self, conn: usize, frame: In<'_>, now: u64) {
        if conn < self.quiet_conns {
            if let In::Error { code, .. } = &frame {
                // A refused message is never delivered: it is counted here, not as lost.
                self.t.expected_deliveries -= self.t.room_members[0];
                if *code == b"rate_limited" {
                    self.quiet_refused += 1;
                } else {
                    self.quiet_errors += 1;
                }
            }
            self.t.frame(conn, frame, now);
        } else if self.ws.conn == Some(conn) {
            self.ws.frame(frame);
        }
    }

    fn http(&mut self, conn: usize, status: u16, body: &[u8], now: u64) {
        if conn == self.probe.conn {
            let Some(sent) = self.probe.sent_at.pop_front() else { return };
            if status != 200 {
                self.probe.not_ok += 1;
            }
            let lat = now.saturating_sub(sent);
            if (self.q0..self.q1).contains(&sent) {
                self.probe.quiet.record(lat);
            } else if (self.q1..self.a1).contains(&sent) {
                self.probe.abuse.record(lat);
            }
            self.probe.tick.record(lat);
            return;
        }
        let Some(r) = self.rest.iter_mut().find(|r| r.conn == Some(conn)) else { return };
        r.busy = false;
        let tally = &mut self.rest_tally;
        tally.bytes += body.len() as u64;
        match status {
            200 => tally.ok += 1,
            429 => tally.limited += 1,
            _ => tally.other += 1,
        }
    }
}

impl Abuse {
    /// Keeps one request in flight on each REST attacker, reconnecting closed ones.
    fn pump_rest(&mut self, net: &mut Net, request: &[u8], now: u64) {
        for r in &mut self.rest {
            if let Some(c) = r.conn.filter(|&c| net.conns[c].st == St::Closed) {
                if net.conns[c].hello {
                    self.rest_tally.closes += 1;
                }
                net.forget(c);
                r.conn = None;
                r.next_connect = now + 5_000_000;
            }
            let Some(c) = r.conn else {
                if now >= r.next_connect && self.rest_tally.connects < MAX_RECONNECTS {
                    r.conn = Some(net.connect(Dial::Http));
                    r.busy = false;
                    self.rest_tally.connects += 1;
                }
                continue;
            };
            if !r.busy && net.send_raw(c, request) {
                r.busy = true;
                self.rest_tally.sent += 1;
            }
        }
    }

    fn stop_rest(&mut self, net: &mut Net) {
        for r in &mut self.rest {
            if let Some(c) = r.conn.take() {
                net.forget(c);
            }
        }
    }
}

/// Posts `n` messages of `size` bytes to `room` over REST, 8 in flight
/// (again after a pause when refused 429); returns their ids.
fn fill_room(addr: SocketAddr, key: &str, room: &str, n: usize, size: usize) -> Result<Vec<String>, String> {
    let mut http = Http::connect(addr)?;
    let path = format!("/api/v1/rooms/{room}/messages");
    let body = format!(r#"{{"userId":"seed","content":"{}"}}"#, "x".repeat(size));
    let mut ids = Vec::with_capacity(n);
    let mut sent = 0;
    while ids.len() < n {
        while sent < n && sent - ids.len() < 8 {
            http.send("POST", &path, Some(key), &body)?;
            sent += 1;
        }
        let (status, answer) = http.recv("POST", &path)?;
        if status == 429 {
            // Over the key's REST budget: post one more, a little later.
            sent -= 1;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if status != 201 {
            return Err(format!("POST {path}: {status} {}", &answer[..answer.len().min(300)]));
        }
        let v: serde_json::Value = serde_json::from_str(&answer).map_err(|e| format!("POST {path}: {e}"))?;
        ids.push(v["id"].as_str().ok_or_else(|| format!("POST {path}: no id"))?.to_string());
    }
    Ok(ids)
}

/// The project id behind `key` (the `iss` of a signed token).
fn project_id(addr: SocketAddr, key: &str) -> Result<String, String> {
    let (status, body) = Http::connect(addr)?.request("GET", "/api/v1/project", Some(key), "")?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("GET /api/v1/project: {status} {body:?}: {e}"))?;
    Ok(v["id"].as_str().ok_or_else(|| format!("GET /api/v1/project: {status} {body}"))?.to_string())
}

fn ratio(abuse: u64, quiet: u64) -> String {
    if quiet == 0 {
        "NA".into()
    } else {
        format!("{:.2}", abuse as f64 / quiet as f64)
    }
}

fn run_abuse(o: &Opts) -> Result<(), String> {
    let members = o.members.unwrap_or(50);
    let rate = if o.rate.is_nan() { 200.0 } else { o.rate };
    if rate <= 0.0 {
        return Err("abuse needs --rate above 0 (the quiet room's messages per second)".into());
    }
    // Each publisher stays at half the hub's default budget of 100 events/s.
    let publishers = o.publishers.unwrap_or((rate / 50.0).ceil() as usize).clamp(1, members);
    let mut target = Target::start(o, None)?;
    let setup_began = Instant::now();
    let key = setup_project(target.addr, &["town".to_string(), "quiet".to_string()])?;
    let ids = fill_room(target.addr, &key, "town", o.heavy_messages, o.heavy_size)?;
    let fill_s = setup_began.elapsed().as_secs_f64();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    let claims =
        serde_json::json!({"iss": project_id(target.addr, &key)?, "sub": "mallory", "exp": exp, "rooms": ["town"]});
    let token = realtimehub::core::token::sign(&claims, key.as_bytes());
    let read_ids = &ids[ids.len().saturating_sub(o.read_ids)..];
    let mut read = String::from(r#"{"type":"read","room":"town","messageIds":["#);
    for (j, id) in read_ids.iter().enumerate() {
        let _ = write!(read, "{}\"{id}\"", if j == 0 { "" } else { "," });
    }
    read.push_str("]}");
    let ws = WsAttacker {
        conn: None,
        query: format!("token={token}"),
        frames: [
            br#"{"type":"join","room":"town","since":0}"#.to_vec(),
            br#"{"type":"history","room":"town","limit":1000}"#.to_vec(),
            read.into_bytes(),
            br#"{"type":"leave","room":"town"}"#.to_vec(),
        ],
        step: 0,
        inflight: Default::default(),
        sent: [0; 4],
        answered: [0; 4],
        refused: [0; 4],
        errors: [0; 4],
        replayed: 0,
        unmatched: 0,
        lost_in_close: 0,
        connects: 0,
        closes: 0,
        next_connect: 0,
        pace: None,
    };
    let rest_request = format!(
        "GET /api/v1/rooms/town/messages?limit=1000 HTTP/1.1\r\nHost: {}\r\nX-API-Key: {key}\r\n\r\n",
        target.addr
    );
    let health_request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", target.addr);

    let start = Instant::now();
    let mut net = Net::new(target.addr, key, start, Dialect::Native).map_err(|e| e.to_string())?;
    let plan = TrafficPlan {
        name: "abuse",
        measure: Measure::Delivery,
        room_names: vec!["quiet".to_string()],
        conns: (0..members).map(|i| (vec![0], i < publishers)).collect(),
        rate: rate / publishers as f64,
        window: 1,
        check_seq: true,
    };
    let mut t = Traffic::new(o, plan);
    let (connect_time, _) = t.connect_and_join(&mut net, o)?;
    let probe = Probe {
        conn: net.connect(Dial::Http),
        sent_at: Default::default(),
        next_due: 0,
        skipped: 0,
        not_ok: 0,
        quiet: Histogram::new(),
        abuse: Histogram::new(),
        tick: Histogram::new(),
    };
    let mut a = Abuse {
        t,
        quiet_conns: members,
        quiet_refused: 0,
        quiet_errors: 0,
        probe,
        ws,
        rest: Vec::new(),
        rest_tally: RestTally::default(),
        q0: u64::MAX,
        q1: u64::MAX,
        a1: u64::MAX,
    };
    let began = Instant::now();
    while net.conns[a.probe.conn].st != St::Http {
        net.turn(&mut a, Some(Duration::from_millis(5))).map_err(|e| e.to_string())?;
        if began.elapsed() > Duration::from_secs(10) || net.conns[a.probe.conn].st == St::Closed {
            return Err(format!("the /health probe did not connect: {}", net.cx.trouble.samples.join("; ")));
        }
    }
    eprintln!(
        "[abuse] setup: {} messages of {} B in `town` in {fill_s:.2}s, {members} members and {publishers} publishers \
         in `quiet` in {:.2}s",
        ids.len(),
        o.heavy_size,
        connect_time.as_secs_f64()
    );

    // Run: warm-up, quiet phase, abuse phase.
    let run_start = net.now();
    a.q0 = run_start + (o.warmup * 1e9) as u64;
    a.q1 = a.q0 + (o.duration * 1e9) as u64;
    a.a1 = a.q1 + (o.duration * 1e9) as u64;
    a.t.warm = a.q0;
    a.t.end = a.q1;
    a.t.sending = true;
    a.probe.next_due = run_start;
    let mut pace = Pace::new(rate, run_start);
    let (ws_on, rest_on) = (o.attack != Attack::Rest, o.attack != Attack::Ws);
    let mut cpu = [None; 3];
    let mut metrics = [None, None];
    let mut quiet_room = None;
    let mut next_tick = run_start + 1_000_000_000;
    loop {
        let now = net.now();
        if cpu[0].is_none() && now >= a.q0 {
            metrics[0] = fetch_metrics(target.addr);
            cpu[0] = Some(CpuSample::take(target.pid));
        }
        if cpu[1].is_none() && now >= a.q1 {
            cpu[1] = Some(CpuSample::take(target.pid));
            metrics[1] = fetch_metrics(target.addr);
            quiet_room = Some((std::mem::replace(&mut a.t.hist, Histogram::new()), a.t.deliveries_window));
            // Deliveries of messages sent in the abuse phase count however late they come.
            a.t.deliveries_window = 0;
            a.t.warm = a.q1;
            a.t.end = u64::MAX;
            if ws_on && o.attack_rate > 0.0 {
                a.ws.pace = Some(Pace::new(o.attack_rate, now));
            }
            if rest_on {
                a.rest =
                    (0..REST_ATTACKERS).map(|_| RestAttacker { conn: None, busy: false, next_connect: 0 }).collect();
            }
        }
        if now >= a.a1 {
            cpu[2] = Some(CpuSample::take(target.pid));
            break;
        }
        let mut timeout = a.t.send_due(&mut net, &mut pace, now);
        while a.probe.next_due <= now {
            if a.probe.sent_at.len() < PROBE_INFLIGHT && net.send_raw(a.probe.conn, health_request.as_bytes()) {
                a.probe.sent_at.push_back(now);
            } else {
                a.probe.skipped += 1;
            }
            a.probe.next_due += PROBE_EVERY;
        }
        timeout = timeout.min(Duration::from_nanos(a.probe.next_due.saturating_sub(now)));
        if now >= a.q1 {
            if ws_on {
                a.ws.pump(&mut net, now);
                timeout = timeout.min(Duration::from_millis(1));
            }
            a.pump_rest(&mut net, rest_request.as_bytes(), now);
        }
        net.flush_dirty();
        net.turn(&mut a, Some(timeout)).map_err(|e| e.to_string())?;
        if now >= next_tick {
            if !o.quiet {
                eprintln!(
                    "[abuse] t={:>5.1}s {} health_p99_us={} room_p99_us={} room_max_us={} ws_sent={} rest_sent={} open={}",
                    (now - run_start) as f64 / 1e9,
                    if now < a.q0 { "warmup" } else if now < a.q1 { "quiet" } else { "abuse" },
                    us(a.probe.tick.quantile(0.99)),
                    us(a.t.tick.quantile(0.99)),
                    us(a.t.tick.max),
                    a.ws.sent.iter().sum::<u64>(),
                    a.rest_tally.sent,
                    net.cx.open
                );
            }
            a.probe.tick.clear();
            a.t.tick.clear();
            a.t.tick_sent = 0;
            a.t.tick_recv = 0;
            next_tick += 1_000_000_000;
        }
        if let Some(status) = target.died() {
            return Err(format!("the hub exited during the run: {status}"));
        }
    }
    // Nothing new is sent; wait (at most 10 s) for what the quiet clients are
    // owed and for the attackers' answers, then drop the attackers (RST).
    a.t.sending = false;
    let drain_began = Instant::now();
    while drain_began.elapsed() < Duration::from_secs(10)
        && (a.t.deliveries < a.t.expected_deliveries
            || !a.probe.sent_at.is_empty()
            || a.ws.conn.is_some_and(|c| net.conns[c].st == St::Open && !a.ws.inflight.is_empty())
            || a.rest.iter().any(|r| r.busy && r.conn.is_some_and(|c| net.conns[c].st == St::Http)))
    {
        net.turn(&mut a, Some(Duration::from_millis(20))).map_err(|e| e.to_string())?;
    }
    let drain_s = drain_began.elapsed().as_secs_f64();
    a.ws.stop(&mut net);
    a.stop_rest(&mut net);
    let metrics_end = fetch_metrics(target.addr);

    let (quiet_hist, quiet_delivered) = quiet_room.unwrap_or((Histogram::new(), 0));
    let (h_q, h_a, r_q, r_a) = (&a.probe.quiet, &a.probe.abuse, &quiet_hist, &a.t.hist);
    let secs = o.duration;
    let mut line = ResultLine::new("abuse", &target);
    line.kv("attack", format!("{:?}", o.attack).to_lowercase())
        .kv("attack_rate", if o.attack_rate > 0.0 { format!("{}", o.attack_rate) } else { "max".into() })
        .kv("heavy_messages", ids.len())
        .kv("heavy_size", o.heavy_size)
        .kv("read_ids", read_ids.len())
        .kv("members", members)
        .kv("publishers", publishers)
        .kv("rate", rate)
        .kv("size", o.size)
        .kv("duration_s", secs);
    for (phase, h) in [("quiet", h_q), ("abuse", h_a)] {
        line.kv(&format!("{phase}_health_p50_us"), us(h.quantile(0.5)))
            .kv(&format!("{phase}_health_p99_us"), us(h.quantile(0.99)))
            .kv(&format!("{phase}_health_max_us"), us(h.max))
            .kv(&format!("{phase}_health_samples"), h.total);
    }
    for (phase, h, delivered) in [("quiet", r_q, quiet_delivered), ("abuse", r_a, a.t.deliveries_window)] {
        line.kv(&format!("{phase}_room_p50_us"), us(h.quantile(0.5)))
            .kv(&format!("{phase}_room_p99_us"), us(h.quantile(0.99)))
            .kv(&format!("{phase}_room_max_us"), us(h.max))
            .kv(&format!("{phase}_room_delivered"), delivered);
    }
    let health_ratio = ratio(h_a.quantile(0.99), h_q.quantile(0.99));
    let room_ratio = ratio(r_a.quantile(0.99), r_q.quantile(0.99));
    let met = [&health_ratio, &room_ratio].iter().all(|r| r.parse::<f64>().is_ok_and(|v| v <= 2.0));
    line.kv("health_p99_ratio", &health_ratio)
        .kv("room_p99_ratio", &room_ratio)
        .kv("target_2x", if met { "met" } else { "not_met" })
        .kv("health_skipped", a.probe.skipped)
        .kv("health_not_ok", a.probe.not_ok)
        .kv("health_unanswered", a.probe.sent_at.len());
    if ws_on {
        let w = &a.ws;
        let sum = |v: &[u64; 4]| v.iter().sum::<u64>();
        line.kv("ws_sent", sum(&w.sent))
            .kv("ws_answered", sum(&w.answered))
            .kv("ws_refused", sum(&w.refused))
            .kv("ws_errors", sum(&w.errors));
        for kind in HEAVY {
            let k = kind as usize;
            let name = format!("{kind:?}").to_lowercase();
            line.kv(&format!("ws_{name}"), format!("{}/{}/{}", w.answered[k], w.refused[k], w.sent[k]));
        }
        line.kv("ws_replayed", w.replayed)
            .kv("ws_unanswered", w.lost_in_close)
            .kv("ws_connects", w.connects)
            .kv("ws_closes", w.closes)
            .kv("ws_unmatched", w.unmatched);
    }
    if rest_on {
        let r = &a.rest_tally;
        line.kv("rest_sent", r.sent)
            .kv("rest_200", r.ok)
            .kv("rest_429", r.limited)
            .kv("rest_other", r.other)
            .kv("rest_connects", r.connects)
            .kv("rest_closes", r.closes)
            .kv("rest_mib_in", format!("{:.1}", r.bytes as f64 / 1048576.0));
    }
    if let [Some(c0), Some(c1), Some(c2)] = cpu {
        c0.report(&c1, secs, "quiet_", &mut line);
        c1.report(&c2, secs, "abuse_", &mut line);
    }
    let quiet_closed = net.conns[..members].iter().filter(|c| c.st == St::Closed).count();
    line.kv("quiet_refused", a.quiet_refused)
        .kv("quiet_errors", a.quiet_errors)
        .kv("quiet_closed", quiet_closed)
        .kv("lost", a.t.expected_deliveries.saturating_sub(a.t.deliveries))
        .kv("seq_gaps", a.t.seq_gaps)
        .kv("max_send_lag_us", us(pace.max_lag))
        .kv("drain_s", format!("{drain_s:.2}"));
    report_hub_metrics(metrics[0].as_deref(), metrics[1].as_deref(), "quiet_", &mut line);
    report_hub_metrics(metrics[1].as_deref(), metrics_end.as_deref(), "abuse_", &mut line);
    line.0.push(' ');
    line.0.push_str(&net.cx.trouble.summary());
    line.print();
    report_samples(&net);
    net.close_all();
    target.stop();
    Ok(())
}

// ---------------------------------------------------------------- main

fn main() {
    let opts = match parse_opts(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            eprintln!("loadgen: no scenario given, nothing to run.\n{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let nofile = raise_nofile();
    let want = opts.connections.or(opts.members).unwrap_or(1000) as u64 + 256;
    if nofile < want {
        eprintln!("loadgen: warning: open-file limit {nofile} is below the {want} this run needs (ulimit -n)");
    }
    let result = match opts.scenario.as_str() {
        "fanout" => {
            let n = opts.members.unwrap_or(1000);
            let p = opts.publishers.unwrap_or(4).clamp(1, n);
            run_traffic(
                &opts,
                TrafficPlan {
                    name: "fanout",
                    measure: Measure::Delivery,
                    room_names: room_names(1),
                    conns: (0..n).map(|i| (vec![0], i < p)).collect(),
                    rate: if opts.rate.is_nan() { 0.0 } else { opts.rate },
                    window: if opts.window == 0 { 4 } else { opts.window },
                    check_seq: true,
                },
            )
        }
        "rooms" => {
            let c = opts.connections.unwrap_or(10_000);
            let k = opts.room_size.min(c);
            let rooms = c / k;
            run_traffic(
                &opts,
                TrafficPlan {
                    name: "rooms",
                    measure: Measure::Delivery,
                    room_names: room_names(rooms),
                    conns: (0..rooms * k).map(|i| (vec![(i / k) as u32], i % k == 0)).collect(),
                    rate: if opts.rate.is_nan() { 1.0 } else { opts.rate },
                    window: if opts.window == 0 { 4 } else { opts.window },
                    check_seq: true,
                },
            )
        }
        "ingest" => {
            let rooms = opts.rooms;
            let p = opts.publishers.unwrap_or(8).max(1);
            let conns = (0..p)
                .map(|i| {
                    let mine: Vec<u32> = if rooms >= p {
                        (0..rooms).filter(|r| r % p == i).map(|r| r as u32).collect()
                    } else {
                        vec![(i % rooms) as u32]
                    };
                    (mine, true)
                })
                .collect();
            run_traffic(
                &opts,
                TrafficPlan {
                    name: "ingest",
                    measure: Measure::Ack,
                    room_names: room_names(rooms),
                    conns,
                    rate: if opts.rate.is_nan() { 0.0 } else { opts.rate },
                    window: if opts.window == 0 { 8 } else { opts.window },
                    check_seq: false,
                },
            )
        }
        "abuse" => run_abuse(&opts),
        "idle" => run_idle(&opts),
        "connect" => run_connect(&opts),
        other => Err(format!("unknown scenario {other:?}")),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {}: {e}", opts.scenario);
        std::process::exit(1);
    }
}
