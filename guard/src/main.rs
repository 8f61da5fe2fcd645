//! txgate-guard: loads the XDP program, keeps its ban maps (pinned in bpffs), and serves the ban
//! API on a Unix socket. See guard/README.md.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::EbpfLoader;
use txgate_guard::api::{Api, BanStore, Call, XdpCounters};
use txgate_guard::http::{self, Parse, Response};
use txgate_guard::policy::{canonical, v4_from_key, v4_key, v6_from_net_key, v6_key, v6_net_key, Cidr, Protected};

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_guard.o"));
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const USAGE: &str = "usage: txgate-guard --iface IF [--iface IF2] --port PORT[,PORT...] --allow-uid UID \
[--socket PATH] [--pin-dir DIR] [--never-ban CIDR]... [--xdp-mode auto|native|generic] [--metrics-listen ADDR:PORT]";

struct Options {
    ifaces: Vec<String>,
    ports: Vec<u16>,
    allow_uids: Vec<u32>,
    socket: PathBuf,
    pin_dir: PathBuf,
    never_ban: Vec<Cidr>,
    mode: String,
    metrics_listen: Option<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        ifaces: Vec::new(),
        ports: Vec::new(),
        allow_uids: Vec::new(),
        socket: PathBuf::from("/run/txgate-guard/bans.sock"),
        pin_dir: PathBuf::from("/sys/fs/bpf/txgate"),
        never_ban: Vec::new(),
        mode: "auto".to_string(),
        metrics_listen: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--iface" => o.ifaces.push(value()?),
            "--port" => {
                for p in value()?.split(',').filter(|p| !p.trim().is_empty()) {
                    let port = p.trim().parse::<u16>().ok().filter(|p| *p != 0);
                    o.ports.push(port.ok_or_else(|| format!("--port: {p:?} is not a port (1-65535)"))?);
                }
            }
            "--allow-uid" => {
                let v = value()?;
                o.allow_uids.push(v.parse().map_err(|_| format!("--allow-uid: {v:?} is not a uid"))?);
            }
            "--socket" => o.socket = PathBuf::from(value()?),
            "--pin-dir" => o.pin_dir = PathBuf::from(value()?),
            "--never-ban" => {
                for c in value()?.split(',').filter(|c| !c.trim().is_empty()) {
                    o.never_ban.push(Cidr::parse(c.trim()).map_err(|e| format!("--never-ban: {e}"))?);
                }
            }
            "--xdp-mode" => {
                o.mode = value()?;
                if !["auto", "native", "generic"].contains(&o.mode.as_str()) {
                    return Err(format!("--xdp-mode: {:?} is not auto, native or generic", o.mode));
                }
            }
            "--metrics-listen" => o.metrics_listen = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.ifaces.is_empty() {
        return Err(format!("--iface is required\n{USAGE}"));
    }
    if o.ports.is_empty() {
        return Err(format!("--port is required: only traffic to the protected ports is dropped\n{USAGE}"));
    }
    if o.allow_uids.is_empty() {
        return Err(format!("--allow-uid is required (the uid Envoy runs as)\n{USAGE}"));
    }
    Ok(o)
}

/// The kernel's ban maps: `bans4` and `bans6` by single address, `bans6net` by IPv6 /64 (the
/// program looks up the address, then its /64).
struct XdpStore {
    bans4: HashMap<MapData, u32, u64>,
    bans6: HashMap<MapData, [u8; 16], u64>,
    bans6net: HashMap<MapData, u64, u64>,
    stats: PerCpuArray<MapData, u64>,
}

/// Which map holds a ban, and its key there.
enum Key {
    V4(u32),
    V6([u8; 16]),
    V6Net(u64),
}

fn key(ban: Cidr) -> Result<Key, String> {
    match (ban.addr, ban.prefix) {
        (IpAddr::V4(v4), 32) => Ok(Key::V4(v4_key(v4))),
        (IpAddr::V6(v6), 128) => Ok(Key::V6(v6_key(v6))),
        (IpAddr::V6(v6), 64) => Ok(Key::V6Net(v6_net_key(v6))),
        _ => Err(format!("{ban}: the kernel keeps single addresses and IPv6 /64s only")),
    }
}

impl BanStore for XdpStore {
    fn insert(&mut self, ban: Cidr, expires_ns: u64) -> Result<(), String> {
        match key(ban)? {
            Key::V4(k) => self.bans4.insert(k, expires_ns, 0),
            Key::V6(k) => self.bans6.insert(k, expires_ns, 0),
            Key::V6Net(k) => self.bans6net.insert(k, expires_ns, 0),
        }
        .map_err(|e| e.to_string())
    }

    fn get(&self, ban: Cidr) -> Option<u64> {
        match key(ban).ok()? {
            Key::V4(k) => self.bans4.get(&k, 0).ok(),
            Key::V6(k) => self.bans6.get(&k, 0).ok(),
            Key::V6Net(k) => self.bans6net.get(&k, 0).ok(),
        }
    }

    fn remove(&mut self, ban: Cidr) -> Result<bool, String> {
        if self.get(ban).is_none() {
            return Ok(false);
        }
        match key(ban)? {
            Key::V4(k) => self.bans4.remove(&k),
            Key::V6(k) => self.bans6.remove(&k),
            Key::V6Net(k) => self.bans6net.remove(&k),
        }
        .map(|()| true)
        .map_err(|e| e.to_string())
    }

    fn list(&self) -> Vec<(Cidr, u64)> {
        let v4 =
            self.bans4.iter().filter_map(Result::ok).map(|(k, v)| (Cidr::around(IpAddr::V4(v4_from_key(k)), 32), v));
        let v6 = self
            .bans6
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Cidr::around(IpAddr::V6(Ipv6Addr::from(k)), 128), v));
        let net = self
            .bans6net
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Cidr::around(IpAddr::V6(v6_from_net_key(k)), 64), v));
        v4.chain(v6).chain(net).collect()
    }

    fn counters(&self) -> XdpCounters {
        let sum = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().fold(0u64, |a, b| a.saturating_add(*b))).unwrap_or(0);
        XdpCounters { dropped: sum(0), passed: sum(1), expired: sum(2), banned_other_port: sum(3) }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Every address configured on this node's interfaces (in the agent's network namespace).
fn node_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(canonical(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).ok()?;
    // SAFETY: SO_PEERCRED fills a ucred of the length we pass.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn read_request(stream: &mut impl Read) -> Result<http::Request, Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        match http::parse(&buf) {
            Parse::Done(req) => return Ok(req),
            Parse::Bad(why) => return Err(Response::error(400, "bad_request", why)),
            Parse::Incomplete => {}
        }
        let n = stream.read(&mut chunk).map_err(|e| Response::error(400, "bad_request", e.to_string()))?;
        if n == 0 {
            return Err(Response::error(400, "bad_request", "connection closed mid-request"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

type Shared = Arc<Mutex<(Api, XdpStore)>>;

fn serve_unix(listener: UnixListener, shared: Shared) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let uid = peer_uid(&stream);
        let response = match read_request(&mut stream) {
            Ok(req) => match shared.lock() {
                Ok(mut guard) => {
                    let (api, store) = &mut *guard;
                    let nodes = node_addresses();
                    api.handle(store, &req, &Call { peer_uid: uid, now_ns: monotonic_ns(), node_addresses: &nodes })
                }
                Err(_) => Response::error(500, "internal", "state lock poisoned"),
            },
            Err(resp) => resp,
        };
        let _ = stream.write_all(&response.to_bytes());
    }
}

/// Prometheus on TCP: `/metrics` only, to anyone who can reach the address.
fn serve_metrics(listener: TcpListener, shared: Shared) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let response = match read_request(&mut stream) {
            Ok(req) if req.method == "GET" && req.path == "/metrics" => match shared.lock() {
                Ok(guard) => Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: guard.0.metrics(&guard.1, monotonic_ns()),
                },
                Err(_) => Response::error(500, "internal", "state lock poisoned"),
            },
            Ok(_) => Response::error(404, "not_found", "only GET /metrics here"),
            Err(resp) => resp,
        };
        let _ = stream.write_all(&response.to_bytes());
    }
}

fn on_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs fills the struct we own for a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    rc == 0 && magic == BPF_FS_MAGIC
}

fn run(o: Options) -> Result<(), String> {
    std::fs::create_dir_all(&o.pin_dir).map_err(|e| format!("cannot create {}: {e}", o.pin_dir.display()))?;
    if !on_bpffs(&o.pin_dir) {
        return Err(format!(
            "{} is not on a bpffs: bans could not survive a restart (mount -t bpf bpf /sys/fs/bpf)",
            o.pin_dir.display()
        ));
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&o.pin_dir)
        .load(PROGRAM)
        .map_err(|e| format!("loading the XDP program failed: {e}"))?;
    let program: &mut Xdp = ebpf
        .program_mut("txgate_guard")
        .ok_or("no program txgate_guard in the object")?
        .try_into()
        .map_err(|e| format!("txgate_guard is not an XDP program: {e}"))?;
    program.load().map_err(|e| format!("XDP refused by the kernel (verifier): {e}"))?;
    for iface in &o.ifaces {
        let attached = match o.mode.as_str() {
            "native" => program.attach(iface, XdpMode::Driver).map(|_| "native"),
            "generic" => program.attach(iface, XdpMode::Skb).map(|_| "generic"),
            _ => program.attach(iface, XdpMode::Driver).map(|_| "native").or_else(|e| {
                log::warn!("txgate-guard: native XDP on {iface} refused ({e}); trying generic");
                program.attach(iface, XdpMode::Skb).map(|_| "generic")
            }),
        };
        let mode = attached.map_err(|e| format!("XDP refused by the kernel: attaching to {iface}: {e}"))?;
        eprintln!("txgate-guard: XDP attached to {iface} ({mode} mode)");
    }
    let mut ports: Array<MapData, u8> =
        Array::try_from(ebpf.take_map("ports").ok_or("no map ports")?).map_err(|e| format!("map ports: {e}"))?;
    for port in &o.ports {
        ports.set(u32::from(*port), 1, 0).map_err(|e| format!("setting port {port}: {e}"))?;
    }
    let store = XdpStore {
        bans4: HashMap::try_from(ebpf.take_map("bans4").ok_or("no map bans4")?).map_err(|e| format!("bans4: {e}"))?,
        bans6: HashMap::try_from(ebpf.take_map("bans6").ok_or("no map bans6")?).map_err(|e| format!("bans6: {e}"))?,
        bans6net: HashMap::try_from(ebpf.take_map("bans6net").ok_or("no map bans6net")?)
            .map_err(|e| format!("bans6net: {e}"))?,
        stats: PerCpuArray::try_from(ebpf.take_map("stats").ok_or("no map stats")?)
            .map_err(|e| format!("stats: {e}"))?,
    };
    let kept = store.list().into_iter().filter(|(_, e)| *e > monotonic_ns()).count();
    let api = Api::new(Protected { never_ban: o.never_ban.clone() }, o.allow_uids.clone());
    let shared: Shared = Arc::new(Mutex::new((api, store)));

    if let Some(dir) = o.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&o.socket);
    let listener = UnixListener::bind(&o.socket).map_err(|e| format!("cannot bind {}: {e}", o.socket.display()))?;
    // Anyone may connect; the peer's uid decides (SO_PEERCRED). Reaching the directory is the
    // first gate (a hostPath mount in Kubernetes).
    std::fs::set_permissions(&o.socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("chmod {}: {e}", o.socket.display()))?;

    // SIGTERM and SIGINT are taken by sigwait below, in every thread.
    // SAFETY: plain signal-mask calls on a set we own.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    if let Some(addr) = &o.metrics_listen {
        let tcp = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let s = shared.clone();
        std::thread::spawn(move || serve_metrics(tcp, s));
    }
    let s = shared.clone();
    std::thread::spawn(move || serve_unix(listener, s));
    eprintln!(
        "txgate-guard: ready: socket {}, ports {:?}, allowed uids {:?}, {kept} ban(s) kept in {}",
        o.socket.display(),
        o.ports,
        o.allow_uids,
        o.pin_dir.display()
    );
    let mut sig: libc::c_int = 0;
    // SAFETY: waits for one of the blocked signals.
    unsafe { libc::sigwait(&set, &mut sig) };
    let _ = std::fs::remove_file(&o.socket);
    eprintln!("txgate-guard: signal {sig}: detaching XDP; bans stay pinned in {}", o.pin_dir.display());
    drop(ebpf);
    Ok(())
}

fn main() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Info && m.target().starts_with("txgate")
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("{}", r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_options(&args).and_then(run);
    if let Err(e) = result {
        eprintln!("txgate-guard: {e}");
        std::process::exit(1);
    }
}
