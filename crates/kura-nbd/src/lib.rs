//! A read-only NBD server: the fixed-newstyle handshake, `NBD_OPT_GO`/`INFO`/`LIST`,
//! structured replies (holes sent as holes, never as zero bytes) and the `base:allocation`
//! meta context, several clients at once, and an end: at a deadline or when stopped, every
//! client's connection is shut, so a client gets an error and never wrong data.
//!
//! What is served is an [`Export`]: each connection gets its own from a factory.
//!
//! With a TLS configuration, a client must upgrade the connection (`NBD_OPT_STARTTLS`)
//! before anything else: every other option is answered `NBD_REP_ERR_TLS_REQD`, and the
//! export is reached only over TLS. Who may connect is the configuration's business (kura's
//! exports require a client certificate of their own CA).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const REP_ERR_INVALID: u32 = (1 << 31) | 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_READ_ONLY: u16 = 2;
const TFLAG_SEND_FLUSH: u16 = 4;
const TFLAG_CAN_MULTI_CONN: u16 = 256;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_BLOCK_STATUS: u16 = 7;
const CMD_FLAG_REQ_ONE: u16 = 8;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// The only meta context served.
const BASE_ALLOCATION: &str = "base:allocation";
const CONTEXT_ID: u32 = 1;
/// Largest read or status request answered (what qemu and libnbd ask for is far smaller).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Longest option a client may send.
const MAX_OPTION: u32 = 64 << 10;

/// A hole: reads as zeros and is not allocated (`NBD_STATE_HOLE | NBD_STATE_ZERO`).
pub const STATE_HOLE_ZERO: u32 = 3;

/// One run of a disk: `len` bytes with a `base:allocation` state (0 data, 3 hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Its length in bytes.
    pub len: u64,
    /// 0 for data; [`STATE_HOLE_ZERO`] for a hole.
    pub state: u32,
}

/// What one connection reads: a fixed-size disk.
pub trait Export: Send {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (within the size).
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The runs covering `offset..offset + len` (within the size), in order; they may end
    /// past the range.
    fn extents(&mut self, offset: u64, len: u64) -> io::Result<Vec<Extent>>;
}

/// Makes the [`Export`] of a new connection.
pub type Factory = Arc<dyn Fn() -> io::Result<Box<dyn Export>> + Send + Sync>;

/// Where an export listens.
pub enum Listener {
    /// A Unix socket.
    Unix(UnixListener),
    /// TCP (off loopback, the caller gives a TLS configuration).
    Tcp(TcpListener),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// Stops a running [`serve`] from another thread.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Ends the export now: no new clients, and every connection is shut.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why [`serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The deadline passed.
    Expired,
    /// [`Stop::stop`] was called.
    Stopped,
}

/// Serves `name` on `listener` until `deadline` or `stop`, one thread per client; then
/// shuts every connection and returns. With `tls`, clients must upgrade to TLS first.
pub fn serve(
    listener: Listener,
    name: &str,
    factory: Factory,
    tls: Option<Arc<rustls::ServerConfig>>,
    deadline: Option<Instant>,
    stop: &Stop,
) -> io::Result<Ended> {
    match &listener {
        Listener::Unix(l) => l.set_nonblocking(true)?,
        Listener::Tcp(l) => l.set_nonblocking(true)?,
    }
    // A handle on each live connection, to cut it off at the end; a connection that ends
    // removes its own.
    let conns: Arc<Mutex<std::collections::HashMap<u64, Conn>>> = Arc::default();
    let mut next = 0u64;
    let mut workers = Vec::new();
    let ended = loop {
        if stop.stopped() {
            break Ended::Stopped;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Ended::Expired;
        }
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| {
                let keep = s.try_clone().map(Conn::Unix);
                (Box::new(s) as Box<dyn Stream + Send>, keep)
            }),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                let keep = s.try_clone().map(Conn::Tcp);
                (Box::new(s) as Box<dyn Stream + Send>, keep)
            }),
        };
        match accepted {
            Ok((stream, keep)) => {
                stream.blocking()?;
                next += 1;
                let id = next;
                conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, keep?);
                let (factory, name, conns) = (factory.clone(), name.to_string(), conns.clone());
                let tls = tls.clone();
                workers.push(std::thread::spawn(move || {
                    if let Err(e) = session(stream, &name, &factory, tls) {
                        tracing::debug!("nbd client ended: {e}");
                    }
                    // The client sees the end of the connection (it waits for it after
                    // NBD_CMD_DISC).
                    if let Some(c) = conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                        c.shutdown();
                    }
                }));
                workers.retain(|w| !w.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    for c in conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
        c.shutdown();
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(ended)
}

trait Stream: Read + Write {
    fn blocking(&self) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn blocking(&self) -> io::Result<()> {
        self.set_nonblocking(false)
    }
}

impl Stream for TcpStream {
    fn blocking(&self) -> io::Result<()> {
        self.set_nonblocking(false)
    }
}

/// A connection after `NBD_OPT_STARTTLS`.
type TlsStream = rustls::StreamOwned<rustls::ServerConnection, Box<dyn Stream + Send>>;

impl Stream for TlsStream {
    fn blocking(&self) -> io::Result<()> {
        self.sock.blocking()
    }
}

fn u16_of(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn u32_of(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn u64_of(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn opt_reply(s: &mut dyn Stream, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(20 + data.len());
    m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

/// A length-prefixed string at `at` in an option's data, and where it ends.
fn string_at(data: &[u8], at: usize) -> Option<(String, usize)> {
    let len = u32_of(data.get(at..at + 4)?) as usize;
    let s = data.get(at + 4..at + 4 + len)?;
    Some((String::from_utf8_lossy(s).into_owned(), at + 4 + len))
}

/// What the handshake agreed.
#[derive(Default)]
struct Agreed {
    structured: bool,
    allocation: bool,
}

/// Where a connection stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// Not offered: plain NBD.
    Off,
    /// Required and not yet started.
    Required,
    /// Running.
    On,
}

/// How option haggling ended.
enum Haggled {
    /// The client chose the export.
    Go(Box<dyn Export>, Agreed),
    /// The client left (`NBD_OPT_ABORT`).
    Abort,
    /// The client asked for TLS, and was told yes.
    StartTls,
}

fn session(
    mut s: Box<dyn Stream + Send>,
    name: &str,
    factory: &Factory,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    let no_zeroes = hello(s.as_mut())?;
    let state = if tls.is_some() {
        Tls::Required
    } else {
        Tls::Off
    };
    match haggle(s.as_mut(), name, factory, no_zeroes, state)? {
        Haggled::Go(e, agreed) => transmission(s.as_mut(), e, &agreed),
        Haggled::Abort => Ok(()),
        Haggled::StartTls => {
            let config = tls.ok_or_else(|| bad("TLS without a configuration"))?;
            let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            let mut t: TlsStream = rustls::StreamOwned::new(conn, s);
            while t.conn.is_handshaking() {
                t.conn.complete_io(&mut t.sock)?;
            }
            match haggle(&mut t, name, factory, no_zeroes, Tls::On)? {
                Haggled::Go(e, agreed) => transmission(&mut t, e, &agreed),
                Haggled::Abort | Haggled::StartTls => Ok(()),
            }
        }
    }
}

#[cfg(feature = "fuzzing")]
fn session_on(s: &mut dyn Stream, name: &str, factory: &Factory) -> io::Result<()> {
    let no_zeroes = hello(s)?;
    match haggle(s, name, factory, no_zeroes, Tls::Off)? {
        Haggled::Go(e, agreed) => transmission(s, e, &agreed),
        _ => Ok(()),
    }
}

/// The server's greeting; returns whether the client asked for no zeroes.
fn hello(s: &mut dyn Stream) -> io::Result<bool> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let mut cf = [0u8; 4];
    s.read_exact(&mut cf)?;
    Ok(u32_of(&cf) & CLIENT_NO_ZEROES != 0)
}

/// Answers options until the client picks the export, leaves, or starts TLS.
fn haggle(
    s: &mut dyn Stream,
    name: &str,
    factory: &Factory,
    no_zeroes: bool,
    tls: Tls,
) -> io::Result<Haggled> {
    let mut agreed = Agreed::default();
    let tflags = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
    let export = loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        if u64_of(&h) != IHAVEOPT {
            return Err(bad("an option without IHAVEOPT"));
        }
        let (option, len) = (u32_of(&h[8..]), u32_of(&h[12..]));
        if len > MAX_OPTION {
            return Err(bad("an option longer than 64 KiB"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        let known = |n: &str| n.is_empty() || n == name;
        if tls == Tls::Required {
            match option {
                OPT_STARTTLS => {
                    opt_reply(s, option, REP_ACK, &[])?;
                    return Ok(Haggled::StartTls);
                }
                OPT_ABORT => {
                    opt_reply(s, option, REP_ACK, &[])?;
                    return Ok(Haggled::Abort);
                }
                // It has no error reply: the connection ends.
                OPT_EXPORT_NAME => return Err(bad("NBD_OPT_EXPORT_NAME before TLS")),
                _ => {
                    opt_reply(
                        s,
                        option,
                        REP_ERR_TLS_REQD,
                        b"TLS is required (NBD_OPT_STARTTLS)",
                    )?;
                    continue;
                }
            }
        }
        match option {
            OPT_STARTTLS => {
                let why: &[u8] = if tls == Tls::On {
                    b"TLS is running already"
                } else {
                    b"this export has no TLS"
                };
                opt_reply(s, option, REP_ERR_INVALID, why)?;
            }
            OPT_EXPORT_NAME => {
                if !known(&String::from_utf8_lossy(&data)) {
                    return Err(bad("unknown export"));
                }
                let e = factory()?;
                let mut m = Vec::new();
                m.extend_from_slice(&e.size().to_be_bytes());
                m.extend_from_slice(&tflags.to_be_bytes());
                if !no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&m)?;
                break e;
            }
            OPT_ABORT => {
                opt_reply(s, option, REP_ACK, &[])?;
                return Ok(Haggled::Abort);
            }
            OPT_LIST => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                opt_reply(s, option, REP_SERVER, &d)?;
                opt_reply(s, option, REP_ACK, &[])?;
            }
            OPT_STRUCTURED_REPLY => {
                agreed.structured = true;
                opt_reply(s, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let Some((export_name, mut at)) = string_at(&data, 0) else {
                    opt_reply(
                        s,
                        option,
                        REP_ERR_INVALID,
                        b"malformed meta context request",
                    )?;
                    continue;
                };
                if option == OPT_SET_META_CONTEXT && !agreed.structured {
                    opt_reply(s, option, REP_ERR_INVALID, b"structured replies first")?;
                    continue;
                }
                if !known(&export_name) {
                    opt_reply(s, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let count = data.get(at..at + 4).map(u32_of).unwrap_or(0);
                at += 4;
                let mut wanted = count == 0 && option == OPT_LIST_META_CONTEXT;
                for _ in 0..count.min(64) {
                    let Some((q, next)) = string_at(&data, at) else {
                        break;
                    };
                    at = next;
                    wanted |= q == BASE_ALLOCATION
                        || (option == OPT_LIST_META_CONTEXT && (q == "base:" || q == "base"));
                }
                if option == OPT_SET_META_CONTEXT {
                    agreed.allocation = wanted;
                }
                if wanted {
                    let mut d = CONTEXT_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    opt_reply(s, option, REP_META_CONTEXT, &d)?;
                }
                opt_reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((export_name, _)) = string_at(&data, 0) else {
                    opt_reply(s, option, REP_ERR_INVALID, b"malformed request")?;
                    continue;
                };
                if !known(&export_name) {
                    opt_reply(s, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let e = match factory() {
                    Ok(e) => e,
                    Err(err) => {
                        opt_reply(s, option, REP_ERR_UNKNOWN, err.to_string().as_bytes())?;
                        continue;
                    }
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&e.size().to_be_bytes());
                info.extend_from_slice(&tflags.to_be_bytes());
                opt_reply(s, option, REP_INFO, &info)?;
                let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&4096u32.to_be_bytes());
                bs.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                opt_reply(s, option, REP_INFO, &bs)?;
                opt_reply(s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    break e;
                }
            }
            _ => opt_reply(s, option, REP_ERR_UNSUP, b"not supported")?,
        }
    };
    Ok(Haggled::Go(export, agreed))
}

fn simple(s: &mut dyn Stream, error: u32, handle: u64, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&error.to_be_bytes());
    m.extend_from_slice(&handle.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

fn chunk(
    s: &mut dyn Stream,
    flags: u16,
    kind: u16,
    handle: u64,
    payload: &[&[u8]],
) -> io::Result<()> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut m = Vec::with_capacity(20 + len);
    m.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&handle.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes());
    for p in payload {
        m.extend_from_slice(p);
    }
    s.write_all(&m)
}

fn transmission(s: &mut dyn Stream, mut e: Box<dyn Export>, agreed: &Agreed) -> io::Result<()> {
    let size = e.size();
    loop {
        let mut r = [0u8; 28];
        s.read_exact(&mut r)?;
        if u32_of(&r) != REQUEST_MAGIC {
            return Err(bad("a request without its magic"));
        }
        let (flags, kind) = (u16_of(&r[4..]), u16_of(&r[6..]));
        let (handle, offset, len) = (u64_of(&r[8..]), u64_of(&r[16..]), u32_of(&r[24..]));
        let in_range = len <= MAX_REQUEST
            && offset
                .checked_add(u64::from(len))
                .is_some_and(|end| end <= size);
        match kind {
            CMD_DISC => return Ok(()),
            CMD_FLUSH => simple(s, 0, handle, &[])?,
            CMD_WRITE => {
                // The payload follows the request; read it, then refuse: read-only.
                if len > MAX_REQUEST {
                    return Err(bad("a write larger than the largest request"));
                }
                io::copy(&mut (&mut *s).take(u64::from(len)), &mut io::sink())?;
                simple(s, EPERM, handle, &[])?;
            }
            CMD_READ if !in_range => simple(s, EINVAL, handle, &[])?,
            CMD_READ => read(s, e.as_mut(), agreed, handle, offset, len)?,
            // A status request may cover any length: the answer covers at most the
            // largest request from its start (the client asks again for the rest).
            CMD_BLOCK_STATUS
                if !agreed.allocation
                    || len == 0
                    || offset
                        .checked_add(u64::from(len))
                        .is_none_or(|end| end > size) =>
            {
                simple(s, EINVAL, handle, &[])?
            }
            CMD_BLOCK_STATUS => {
                let len = len.min(MAX_REQUEST);
                let runs = match e.extents(offset, u64::from(len)) {
                    Ok(r) => r,
                    Err(_) => {
                        simple(s, EIO, handle, &[])?;
                        continue;
                    }
                };
                let mut d = CONTEXT_ID.to_be_bytes().to_vec();
                let end = offset + u64::from(len);
                let mut at = offset;
                for x in runs {
                    if at >= end || x.len == 0 {
                        break;
                    }
                    let n = x.len.min(end - at).min(u64::from(!4095u32));
                    d.extend_from_slice(&(n as u32).to_be_bytes());
                    d.extend_from_slice(&x.state.to_be_bytes());
                    at += n;
                    if flags & CMD_FLAG_REQ_ONE != 0 {
                        break;
                    }
                }
                chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle, &[&d])?;
            }
            _ => simple(s, EINVAL, handle, &[])?,
        }
    }
}

/// A read: with structured replies, holes go as hole chunks and data as data chunks.
fn read(
    s: &mut dyn Stream,
    e: &mut dyn Export,
    agreed: &Agreed,
    handle: u64,
    offset: u64,
    len: u32,
) -> io::Result<()> {
    if !agreed.structured {
        let mut buf = vec![0u8; len as usize];
        return match e.read_at(&mut buf, offset) {
            Ok(()) => simple(s, 0, handle, &buf),
            Err(_) => simple(s, EIO, handle, &[]),
        };
    }
    if len == 0 {
        return chunk(s, REPLY_FLAG_DONE, 0, handle, &[]);
    }
    let runs = match e.extents(offset, u64::from(len)) {
        Ok(r) => r,
        Err(_) => return simple(s, EIO, handle, &[]),
    };
    // Fetch everything before the first byte goes out: an error is then one clean reply.
    let end = offset + u64::from(len);
    let mut pieces: Vec<(u64, Option<Vec<u8>>, u64)> = Vec::new();
    let mut at = offset;
    for x in runs {
        if at >= end {
            break;
        }
        let n = x.len.min(end - at);
        if n == 0 {
            continue;
        }
        if x.state & STATE_HOLE_ZERO == STATE_HOLE_ZERO {
            pieces.push((at, None, n));
        } else {
            let mut buf = vec![0u8; n as usize];
            if e.read_at(&mut buf, at).is_err() {
                return simple(s, EIO, handle, &[]);
            }
            pieces.push((at, Some(buf), n));
        }
        at += n;
    }
    if at < end {
        // The runs did not cover the request: read the rest as data.
        let mut buf = vec![0u8; (end - at) as usize];
        if e.read_at(&mut buf, at).is_err() {
            return simple(s, EIO, handle, &[]);
        }
        pieces.push((at, Some(buf), end - at));
    }
    let last = pieces.len() - 1;
    for (i, (at, data, n)) in pieces.into_iter().enumerate() {
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        match data {
            Some(d) => chunk(
                s,
                flags,
                REPLY_TYPE_OFFSET_DATA,
                handle,
                &[&at.to_be_bytes(), &d],
            )?,
            None => chunk(
                s,
                flags,
                REPLY_TYPE_OFFSET_HOLE,
                handle,
                &[&at.to_be_bytes(), &(n as u32).to_be_bytes()],
            )?,
        }
    }
    Ok(())
}

/// Fuzz harness (feature `fuzzing`): any bytes as what a hostile client sends, answered
/// by a session over a small export with data and holes. It must end cleanly, never panic
/// nor allocate what the client asks for. Returns the bytes the server wrote.
#[cfg(feature = "fuzzing")]
pub fn fuzz_session(data: &[u8]) -> usize {
    struct Replay<'a> {
        input: &'a [u8],
        written: usize,
    }
    impl Read for Replay<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Replay<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Stream for Replay<'_> {
        fn blocking(&self) -> io::Result<()> {
            Ok(())
        }
    }
    struct Small;
    impl Export for Small {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (offset as usize + i) as u8;
            }
            Ok(())
        }
        fn extents(&mut self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
            let mut out = Vec::new();
            let mut at = offset;
            while at < offset + len {
                let end = (at / 65536 + 1) * 65536;
                let state = if (at / 65536).is_multiple_of(2) {
                    0
                } else {
                    STATE_HOLE_ZERO
                };
                out.push(Extent {
                    len: end - at,
                    state,
                });
                at = end;
            }
            Ok(out)
        }
    }
    let factory: Factory = Arc::new(|| Ok(Box::new(Small) as Box<dyn Export>));
    let mut r = Replay {
        input: data,
        written: 0,
    };
    let _ = session_on(&mut r, "pt", &factory);
    r.written
}
