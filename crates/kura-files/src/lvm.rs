//! LVM2 logical volumes inside a physical volume (a partition, or a whole disk), read-only:
//! the PV's label, its metadata area and the volume group's text metadata, parsed here (no
//! well-kept crate reads LVM). Each visible linear logical volume whose extents all lie on
//! this PV becomes a volume of its own, read through its segments. Thin, RAID, mirrored,
//! cached or snapshot volumes and volumes spanning other disks are not listed: they cannot be
//! read from this disk alone.
//!
//! Every number comes from the guest: sizes, offsets and counts are bounded before use, and
//! every segment must lie inside the physical volume.

use crate::{Error, ReadAt, Result};

/// The label's magic and type.
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// A metadata area header's magic.
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The size of a metadata area's header, where a wrapped text continues.
const MDA_HEADER: u64 = 512;
/// Largest metadata text read.
const MAX_TEXT: u64 = 16 << 20;
/// Most logical volumes, segments per volume, and nesting levels accepted.
const MAX_LVS: usize = 1024;
const MAX_SEGMENTS: usize = 4096;
const MAX_DEPTH: usize = 32;

/// A run of a logical volume: `len` bytes at `start` in the volume are at `at` on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Offset in the logical volume.
    pub(crate) start: u64,
    /// Length in bytes.
    pub(crate) len: u64,
    /// Offset on the disk.
    pub(crate) at: u64,
}

/// A logical volume: `vg/lv`, its size and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lv {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) segments: Vec<Segment>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::corrupt("LVM physical volume", reason)
}

/// Reads `buf` at `offset` of a volume mapped by `segments`.
pub(crate) fn read_mapped(
    disk: &mut dyn ReadAt,
    segments: &[Segment],
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        let seg = segments
            .iter()
            .find(|s| s.start <= at && at < s.start + s.len)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("byte {at} lies in no segment of the logical volume"),
                )
            })?;
        let n = ((seg.start + seg.len - at) as usize).min(buf.len() - done);
        disk.read_at(&mut buf[done..done + n], seg.at + (at - seg.start))?;
        done += n;
    }
    Ok(())
}

/// A logical volume as a disk of its own.
pub(crate) struct Mapped {
    pub(crate) disk: Box<dyn ReadAt>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) size: u64,
}

impl ReadAt for Mapped {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_mapped(self.disk.as_mut(), &self.segments, buf, offset)
    }
}

/// The logical volumes of the physical volume at `start` (`len` bytes) of `disk`.
pub(crate) fn logical_volumes(disk: &mut dyn ReadAt, start: u64, len: u64) -> Result<Vec<Lv>> {
    if len < 4096 {
        return Err(corrupt("too small for an LVM label"));
    }
    let mut head = vec![0u8; 2048];
    disk.read_at(&mut head, start)?;
    let sector = (0..4)
        .find(|s| &head[s * 512..s * 512 + 8] == LABEL_ID)
        .ok_or_else(|| corrupt("no LABELONE label in its first four sectors"))?;
    let label = &head[sector * 512..sector * 512 + 512];
    if &label[24..32] != LABEL_TYPE {
        return Err(corrupt("the label is not an LVM2 one"));
    }
    let pvh = le32(label, 20) as usize;
    if !(32..=400).contains(&pvh) {
        return Err(corrupt(format!(
            "the PV header is at {pvh} bytes into its label"
        )));
    }
    let pv = &label[pvh..];
    let uuid = pv[..32].to_vec();
    // Data areas, then metadata areas: lists of (offset, size) each ended by a zero pair.
    let mut areas: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    let mut at = 40;
    for list in &mut areas {
        loop {
            if at + 16 > pv.len() {
                return Err(corrupt("the PV header's area lists run past its label"));
            }
            let (o, s) = (le64(pv, at), le64(pv, at + 8));
            at += 16;
            if o == 0 && s == 0 {
                break;
            }
            list.push((o, s));
        }
    }
    let &(mda, mda_size) = areas[1].first().ok_or_else(|| {
        corrupt("the PV has no metadata area (its VG's metadata is on another disk)")
    })?;
    if mda_size < 2 * MDA_HEADER || mda.checked_add(mda_size).is_none_or(|e| e > len) {
        return Err(corrupt(format!(
            "its metadata area ({mda_size} bytes at {mda}) does not lie within it"
        )));
    }
    let mut h = vec![0u8; MDA_HEADER as usize];
    disk.read_at(&mut h, start + mda)?;
    if &h[4..20] != MDA_MAGIC {
        return Err(corrupt("its metadata area has no LVM2 header"));
    }
    let (text_at, text_len) = (0..8)
        .map(|i| 40 + i * 24)
        .map(|o| (le64(&h, o), le64(&h, o + 8), le32(&h, o + 20)))
        .take_while(|(o, s, _)| *o != 0 || *s != 0)
        .find(|(_, s, flags)| *s > 0 && flags & 1 == 0)
        .map(|(o, s, _)| (o, s))
        .ok_or_else(|| corrupt("its metadata area holds no metadata"))?;
    if text_len > MAX_TEXT.min(mda_size - MDA_HEADER) || text_at < MDA_HEADER || text_at >= mda_size
    {
        return Err(corrupt(format!(
            "its metadata ({text_len} bytes at {text_at}) does not fit its {mda_size}-byte area"
        )));
    }
    let mut text = vec![0u8; text_len as usize];
    // The area is a ring after its header: the text may wrap to just after the header.
    let first = (mda_size - text_at).min(text_len) as usize;
    disk.read_at(&mut text[..first], start + mda + text_at)?;
    if first < text.len() {
        disk.read_at(&mut text[first..], start + mda + MDA_HEADER)?;
    }
    let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
    let root = parse(&text[..end])?;
    lvs_of(&root, &uuid, len).map(|lvs| {
        lvs.into_iter()
            .map(|mut lv| {
                for s in &mut lv.segments {
                    s.at += start;
                }
                lv
            })
            .collect()
    })
}

/// A value of LVM's text metadata.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    List(Vec<Value>),
    Section(Vec<(String, Value)>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn sections(&self) -> impl Iterator<Item = (&str, &Value)> {
        let items = match self {
            Value::Section(items) => items.as_slice(),
            _ => &[],
        };
        items
            .iter()
            .filter(|(_, v)| matches!(v, Value::Section(_)))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// Parses LVM's text format: `key = value`, `name { ... }`, lists in brackets, strings in
/// double quotes, `#` comments.
fn parse(text: &[u8]) -> Result<Value> {
    let mut p = Parser { s: text, at: 0 };
    let items = p.items(0)?;
    p.skip();
    if p.at < p.s.len() {
        return Err(p.error("unexpected text"));
    }
    Ok(Value::Section(items))
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> Error {
        corrupt(format!("its metadata text: {what} at byte {}", self.at))
    }

    fn skip(&mut self) {
        while let Some(&c) = self.s.get(self.at) {
            if c == b'#' {
                while self.s.get(self.at).is_some_and(|c| *c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.at).copied()
    }

    fn word(&mut self) -> Option<String> {
        self.skip();
        let from = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"_.-+".contains(c))
        {
            self.at += 1;
        }
        (self.at > from).then(|| String::from_utf8_lossy(&self.s[from..self.at]).into_owned())
    }

    fn items(&mut self, depth: usize) -> Result<Vec<(String, Value)>> {
        if depth > MAX_DEPTH {
            return Err(self.error("sections nested too deep"));
        }
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == b'}' {
                break;
            }
            let key = self.word().ok_or_else(|| self.error("a name expected"))?;
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    let inner = self.items(depth + 1)?;
                    if self.peek() != Some(b'}') {
                        return Err(self.error("`}` expected"));
                    }
                    self.at += 1;
                    items.push((key, Value::Section(inner)));
                }
                Some(b'=') => {
                    self.at += 1;
                    let v = self.value(depth + 1)?;
                    items.push((key, v));
                }
                _ => return Err(self.error("`=` or `{` expected")),
            }
            if items.len() > 1 << 20 {
                return Err(self.error("too many entries"));
            }
        }
        Ok(items)
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.error("lists nested too deep"));
        }
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    match self.s.get(self.at) {
                        None => return Err(self.error("a string does not end")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            self.at += 1;
                            out.extend(self.s.get(self.at));
                        }
                        Some(c) => out.push(*c),
                    }
                    self.at += 1;
                }
                self.at += 1;
                Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()))
            }
            Some(b'[') => {
                self.at += 1;
                let mut list = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::List(list));
                        }
                        Some(b',') => self.at += 1,
                        Some(_) => {
                            list.push(self.value(depth + 1)?);
                            if list.len() > 1 << 20 {
                                return Err(self.error("too long a list"));
                            }
                        }
                        None => return Err(self.error("a list does not end")),
                    }
                }
            }
            _ => {
                let w = self.word().ok_or_else(|| self.error("a value expected"))?;
                // Integers; anything else (a float, a bare word) is kept as text.
                Ok(w.parse::<i64>().map(Value::Int).unwrap_or(Value::Str(w)))
            }
        }
    }
}

/// A PV uuid as the text writes it (dashes) or as its header holds it (32 characters).
fn same_uuid(text: &str, raw: &[u8]) -> bool {
    let t: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    t == raw
}

/// The linear, visible logical volumes of the VG in `root` that lie on the PV `uuid`
/// (offsets relative to the PV's start; `len` its size).
fn lvs_of(root: &Value, uuid: &[u8], len: u64) -> Result<Vec<Lv>> {
    let (vg_name, vg) = root
        .sections()
        .find(|(_, v)| v.get("physical_volumes").is_some())
        .ok_or_else(|| corrupt("its metadata names no volume group"))?;
    let extent =
        vg.int("extent_size")
            .filter(|n| *n > 0 && *n <= 1 << 32)
            .ok_or_else(|| corrupt("its volume group has no valid extent_size"))? as u64
            * 512;
    let (pv_name, pv) = vg
        .get("physical_volumes")
        .into_iter()
        .flat_map(Value::sections)
        .find(|(_, pv)| pv.str("id").is_some_and(|id| same_uuid(id, uuid)))
        .ok_or_else(|| corrupt(format!("volume group {vg_name} does not list this PV")))?;
    let pe_start =
        pv.int("pe_start")
            .filter(|n| *n >= 0 && (*n as u64) < len / 512)
            .ok_or_else(|| corrupt(format!("{pv_name} has no valid pe_start")))? as u64
            * 512;
    let mut out = Vec::new();
    let Some(lvs) = vg.get("logical_volumes") else {
        return Ok(out);
    };
    'lv: for (name, lv) in lvs.sections().take(MAX_LVS) {
        let visible = matches!(lv.get("status"), Some(Value::List(l)) if l.contains(&Value::Str("VISIBLE".into())));
        if !visible {
            continue;
        }
        let mut segments = Vec::new();
        for (_, seg) in lv.sections().take(MAX_SEGMENTS) {
            let linear = seg.str("type") == Some("striped") && seg.int("stripe_count") == Some(1);
            let stripes = match seg.get("stripes") {
                Some(Value::List(l)) => l.as_slice(),
                _ => &[],
            };
            let (Some(first), Some(count), [Value::Str(on), Value::Int(pe)]) =
                (seg.int("start_extent"), seg.int("extent_count"), stripes)
            else {
                continue 'lv;
            };
            if !linear || on != pv_name || first < 0 || count <= 0 || *pe < 0 {
                continue 'lv;
            }
            let seg_len = (count as u64).checked_mul(extent);
            let at = (*pe as u64)
                .checked_mul(extent)
                .and_then(|o| o.checked_add(pe_start));
            let start = (first as u64).checked_mul(extent);
            match (seg_len, at, start) {
                (Some(l), Some(a), Some(s)) if a.checked_add(l).is_some_and(|e| e <= len) => {
                    segments.push(Segment {
                        start: s,
                        len: l,
                        at: a,
                    })
                }
                _ => {
                    return Err(corrupt(format!(
                        "logical volume {vg_name}/{name} has a segment outside the PV"
                    )));
                }
            }
        }
        segments.sort_by_key(|s| s.start);
        // Contiguous from 0, or it is not one this reader maps.
        let mut size = 0u64;
        for s in &segments {
            if s.start != size {
                continue 'lv;
            }
            size += s.len;
        }
        if size > 0 {
            out.push(Lv {
                name: format!("{vg_name}/{name}"),
                size,
                segments,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
vg0 {
id = "abc"
seqno = 4
extent_size = 8192	# 4 MiB
physical_volumes {
pv0 {
id = "AAAAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGGGG"
pe_start = 2048
pe_count = 100
}
}
logical_volumes {
root {
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 2
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = [
"pv0", 10
]
}
segment2 {
start_extent = 2
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 3]
}
}
pool_tmeta {
status = ["READ", "WRITE"]
segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }
}
thin { status = ["VISIBLE"] segment1 { start_extent = 0 extent_count = 1 type = "thin" } }
}
}
contents = "Text Format Volume Group"
version = 1
description = "a \"quoted\" word"
"#;

    #[test]
    fn linear_visible_volumes_are_mapped_and_the_rest_left_out() {
        let root = parse(TEXT.as_bytes()).unwrap();
        assert_eq!(root.str("description"), Some("a \"quoted\" word"));
        let uuid = b"AAAAAABBBBCCCCDDDDEEEEFFFFGGGGGG";
        let lvs = lvs_of(&root, uuid, 1 << 30).unwrap();
        assert_eq!(lvs.len(), 1, "{lvs:?}");
        let m = 4 << 20;
        assert_eq!(lvs[0].name, "vg0/root");
        assert_eq!(lvs[0].size, 3 * m);
        assert_eq!(
            lvs[0].segments,
            [
                Segment {
                    start: 0,
                    len: 2 * m,
                    at: (1 << 20) + 10 * m
                },
                Segment {
                    start: 2 * m,
                    len: m,
                    at: (1 << 20) + 3 * m
                },
            ]
        );
        // A PV too small for the segments is damage, not a volume.
        assert!(lvs_of(&root, uuid, 20 << 20).is_err());
        assert!(lvs_of(&root, b"XXXXXXBBBBCCCCDDDDEEEEFFFFGGGGGG", 1 << 30).is_err());
    }

    #[test]
    fn malformed_text_is_an_error() {
        for bad in [
            "a {",
            "a = ",
            "a = \"x",
            "a = [1, 2",
            "{",
            "a b",
            &"x {".repeat(100),
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
