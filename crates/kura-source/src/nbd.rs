//! A small NBD client: fixed newstyle handshake, structured replies, meta contexts and block
//! status (see the NBD protocol's `doc/proto.md`). It reads from `qemu-nbd`, `nbdkit` or any
//! server that speaks the same subset.
//!
//! Only what kura needs is here: `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_SET_META_CONTEXT`,
//! `NBD_OPT_GO`, and the commands `READ`, `BLOCK_STATUS` and `DISC`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{Error, Result};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERROR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// `base:allocation` flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Largest single read request sent (servers commonly accept 32 MiB).
const MAX_READ: usize = 16 << 20;

fn proto(msg: impl Into<String>) -> Error {
    Error::Nbd(msg.into())
}

fn io(e: std::io::Error) -> Error {
    Error::Nbd(format!("connection: {e}"))
}

/// A connected client on an export.
#[derive(Debug)]
pub struct Client<S: Read + Write> {
    s: S,
    size: u64,
    structured: bool,
    contexts: HashMap<String, u32>,
    cookie: u64,
}

/// One block-status descriptor: `len` bytes with `flags` (meaning depends on the context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Length in bytes.
    pub len: u64,
    /// Context-specific flags.
    pub flags: u32,
}

impl Client<UnixStream> {
    /// Connects to a Unix socket and negotiates `export` with the given meta contexts.
    pub fn connect_unix(path: &Path, export: &str, contexts: &[&str]) -> Result<Self> {
        let s = UnixStream::connect(path).map_err(io)?;
        Self::handshake(s, export, contexts)
    }
}

impl<S: Read + Write> Client<S> {
    /// Runs the fixed-newstyle handshake on a connected stream.
    pub fn handshake(mut s: S, export: &str, contexts: &[&str]) -> Result<Self> {
        if read_u64(&mut s)? != NBDMAGIC || read_u64(&mut s)? != IHAVEOPT {
            return Err(proto("not a newstyle NBD server"));
        }
        let flags = read_u16(&mut s)?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto("server does not support fixed newstyle negotiation"));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        s.write_all(&client_flags.to_be_bytes()).map_err(io)?;

        let mut c = Client {
            s,
            size: 0,
            structured: false,
            contexts: HashMap::new(),
            cookie: 1,
        };
        c.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let (rep, _) = c.read_option_reply(OPT_STRUCTURED_REPLY)?;
        c.structured = rep == REP_ACK;

        if c.structured && !contexts.is_empty() {
            let mut data = Vec::new();
            put_str32(&mut data, export);
            data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for q in contexts {
                put_str32(&mut data, q);
            }
            c.send_option(OPT_SET_META_CONTEXT, &data)?;
            loop {
                let (rep, payload) = c.read_option_reply(OPT_SET_META_CONTEXT)?;
                match rep {
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        let id = u32::from_be_bytes(payload[..4].try_into().expect("4"));
                        let name = String::from_utf8_lossy(&payload[4..]).into_owned();
                        c.contexts.insert(name, id);
                    }
                    REP_ACK => break,
                    r if r & REP_ERROR_BIT != 0 => break, // contexts unsupported: none negotiated
                    r => return Err(proto(format!("unexpected reply {r} to SET_META_CONTEXT"))),
                }
            }
        }

        let mut data = Vec::new();
        put_str32(&mut data, export);
        data.extend_from_slice(&0u16.to_be_bytes());
        c.send_option(OPT_GO, &data)?;
        let mut have_size = false;
        loop {
            let (rep, payload) = c.read_option_reply(OPT_GO)?;
            match rep {
                REP_INFO if payload.len() >= 12 && read_be16(&payload) == INFO_EXPORT => {
                    c.size = u64::from_be_bytes(payload[2..10].try_into().expect("8"));
                    have_size = true;
                }
                REP_INFO => {}
                REP_ACK => break,
                r if r & REP_ERROR_BIT != 0 => {
                    return Err(proto(format!(
                        "server refused export {export:?}: {}",
                        String::from_utf8_lossy(&payload)
                    )));
                }
                r => return Err(proto(format!("unexpected reply {r} to GO"))),
            }
        }
        if !have_size {
            return Err(proto("server did not report the export size"));
        }
        Ok(c)
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the server agreed to structured replies.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Whether a meta context was negotiated.
    pub fn has_context(&self, name: &str) -> bool {
        self.contexts.contains_key(name)
    }

    fn send_option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).map_err(io)
    }

    fn read_option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>)> {
        if read_u64(&mut self.s)? != OPT_REPLY_MAGIC {
            return Err(proto("bad option reply magic"));
        }
        let got = read_u32(&mut self.s)?;
        let rep = read_u32(&mut self.s)?;
        let len = read_u32(&mut self.s)? as usize;
        if got != opt {
            return Err(proto(format!("reply to option {got}, expected {opt}")));
        }
        if len > 1 << 20 {
            return Err(proto("option reply too large"));
        }
        let mut payload = vec![0; len];
        self.s.read_exact(&mut payload).map_err(io)?;
        Ok((rep, payload))
    }

    fn send_request(&mut self, cmd: u16, offset: u64, len: u32) -> Result<u64> {
        let cookie = self.cookie;
        self.cookie += 1;
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&0u16.to_be_bytes());
        b[6..8].copy_from_slice(&cmd.to_be_bytes());
        b[8..16].copy_from_slice(&cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..28].copy_from_slice(&len.to_be_bytes());
        self.s.write_all(&b).map_err(io)?;
        Ok(cookie)
    }

    /// Reads `buf.len()` bytes at `offset`; holes reported by the server become zeros.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_READ);
            self.read_one(&mut buf[done..done + n], offset + done as u64)?;
            done += n;
        }
        Ok(())
    }

    fn read_one(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(proto(format!(
                "read of {} bytes at {offset} is past the end",
                buf.len()
            )));
        }
        let cookie = self.send_request(CMD_READ, offset, buf.len() as u32)?;
        let magic = read_u32(&mut self.s)?;
        if magic == SIMPLE_REPLY_MAGIC {
            let err = read_u32(&mut self.s)?;
            self.check_cookie(cookie)?;
            if err != 0 {
                return Err(proto(format!("read at {offset} failed with error {err}")));
            }
            return self.s.read_exact(buf).map_err(io);
        }
        self.structured_chunks(magic, cookie, |c, ty, payload_len| match ty {
            REPLY_TYPE_OFFSET_DATA => {
                let at = read_u64(&mut c.s)?;
                let n = payload_len
                    .checked_sub(8)
                    .ok_or_else(|| proto("short data chunk"))?;
                let start = at
                    .checked_sub(offset)
                    .map(|s| s as usize)
                    .filter(|s| s.checked_add(n).is_some_and(|e| e <= buf.len()))
                    .ok_or_else(|| proto("data chunk outside the request"))?;
                c.s.read_exact(&mut buf[start..start + n]).map_err(io)
            }
            REPLY_TYPE_OFFSET_HOLE => {
                let at = read_u64(&mut c.s)?;
                let n = read_u32(&mut c.s)? as usize;
                let start = at
                    .checked_sub(offset)
                    .map(|s| s as usize)
                    .filter(|s| s.checked_add(n).is_some_and(|e| e <= buf.len()))
                    .ok_or_else(|| proto("hole chunk outside the request"))?;
                buf[start..start + n].fill(0);
                Ok(())
            }
            t => Err(proto(format!("unexpected reply chunk type {t} to READ"))),
        })
    }

    /// Block status of `offset..offset+len` in meta context `context`. The server may answer
    /// for less than the whole range; the descriptors start at `offset` and are contiguous.
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Descriptor>> {
        let id = *self
            .contexts
            .get(context)
            .ok_or_else(|| proto(format!("meta context {context:?} was not negotiated")))?;
        let cookie = self.send_request(CMD_BLOCK_STATUS, offset, len)?;
        let magic = read_u32(&mut self.s)?;
        if magic == SIMPLE_REPLY_MAGIC {
            let err = read_u32(&mut self.s)?;
            self.check_cookie(cookie)?;
            return Err(proto(format!(
                "block status at {offset} failed with error {err}"
            )));
        }
        let mut out = Vec::new();
        self.structured_chunks(magic, cookie, |c, ty, payload_len| {
            if ty != REPLY_TYPE_BLOCK_STATUS || payload_len < 4 || (payload_len - 4) % 8 != 0 {
                return Err(proto(format!(
                    "unexpected reply chunk type {ty} to BLOCK_STATUS"
                )));
            }
            let ctx = read_u32(&mut c.s)?;
            for _ in 0..(payload_len - 4) / 8 {
                let len = u64::from(read_u32(&mut c.s)?);
                let flags = read_u32(&mut c.s)?;
                if ctx == id {
                    out.push(Descriptor { len, flags });
                }
            }
            Ok(())
        })?;
        if out.is_empty() {
            return Err(proto(format!(
                "no block status returned for {context:?} at {offset}"
            )));
        }
        Ok(out)
    }

    fn check_cookie(&mut self, cookie: u64) -> Result<()> {
        let got = read_u64(&mut self.s)?;
        if got != cookie {
            return Err(proto(format!("reply for request {got}, expected {cookie}")));
        }
        Ok(())
    }

    /// Reads structured reply chunks until the DONE flag, passing non-error, non-empty ones
    /// to `each(client, type, payload_len)`, which must consume exactly the payload.
    fn structured_chunks(
        &mut self,
        mut magic: u32,
        cookie: u64,
        mut each: impl FnMut(&mut Self, u16, usize) -> Result<()>,
    ) -> Result<()> {
        let mut error = None;
        loop {
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(proto(format!("bad reply magic {magic:#x}")));
            }
            let flags = read_u16(&mut self.s)?;
            let ty = read_u16(&mut self.s)?;
            self.check_cookie(cookie)?;
            let len = read_u32(&mut self.s)? as usize;
            if ty & REPLY_TYPE_ERROR_BIT != 0 {
                let mut payload = vec![0; len.min(1 << 20)];
                self.s.read_exact(&mut payload).map_err(io)?;
                let code = payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4")));
                let msg_len = payload.get(4..6).map_or(0, |b| usize::from(read_be16(b)));
                let msg = payload
                    .get(6..6 + msg_len)
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                error = Some(proto(format!("server error {code}: {msg}")));
            } else if ty != REPLY_TYPE_NONE {
                each(self, ty, len)?;
            } else if len != 0 {
                return Err(proto("NONE chunk with a payload"));
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
            magic = read_u32(&mut self.s)?;
        }
        error.map_or(Ok(()), Err)
    }

    /// Ends the session politely.
    pub fn disconnect(mut self) -> Result<()> {
        self.send_request(CMD_DISC, 0, 0)?;
        self.s.flush().map_err(io)
    }
}

fn put_str32(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn read_be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn read_u16(s: &mut impl Read) -> Result<u16> {
    let mut b = [0; 2];
    s.read_exact(&mut b).map_err(io)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut impl Read) -> Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b).map_err(io)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> Result<u64> {
    let mut b = [0; 8];
    s.read_exact(&mut b).map_err(io)?;
    Ok(u64::from_be_bytes(b))
}

/// Fuzz harness (feature `fuzzing`): `data` is everything a hostile NBD server answers. The
/// client negotiates, reads and asks for block status; it must fail cleanly, never panic
/// nor allocate what the server claims.
#[cfg(feature = "fuzzing")]
pub fn fuzz_replies(data: &[u8]) {
    struct Replay<'a>(&'a [u8]);
    impl Read for Replay<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Replay<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Ok(mut c) = Client::handshake(Replay(data), "", &["base:allocation"]) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    if c.size() >= 4096 {
        let _ = c.read(&mut buf, 0);
    }
    let _ = c.block_status("base:allocation", 0, 1 << 20);
    let _ = c.block_status("base:allocation", 0, 4096);
}
