//! Where the file systems of a disk are: its partitions (GPT, MBR with logical partitions),
//! or the whole disk when it has no partition table.

use serde::Serialize;

use crate::{Error, ReadAt, Result, Slice, guarded};

/// A file system's kind, from its signature. [`FsKind::Ext`], [`FsKind::Xfs`] and
/// [`FsKind::Vfat`] can be browsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext2, ext3 or ext4.
    Ext,
    /// XFS, v4 or v5.
    Xfs,
    /// FAT12/16/32.
    Vfat,
    /// NTFS (recognized, not readable yet).
    Ntfs,
    /// An LVM physical volume (recognized, not readable yet).
    Lvm,
    /// Linux swap.
    Swap,
    /// No signature kura knows.
    Unknown,
}

impl FsKind {
    /// Whether kura can list and extract its files.
    pub fn readable(self) -> bool {
        matches!(self, FsKind::Ext | FsKind::Xfs | FsKind::Vfat)
    }
}

/// A partition, or the whole disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// The partition's number in its table (from 1); 0 for a disk without a table.
    pub number: u32,
    /// `gpt`, `mbr` or `none`; `lvm` for a logical volume.
    pub table: &'static str,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// The GPT partition name, or a logical volume's `vg/lv`.
    pub name: String,
    /// What its signature says it holds.
    pub fs: FsKind,
    /// A logical volume's runs on the disk (empty for a partition, which is one run).
    #[serde(skip)]
    pub(crate) map: Vec<crate::lvm::Segment>,
}

/// Most partition entries a GPT may claim (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 1024;

/// The disk's volumes: its partitions, in table order, or the whole disk as volume 0; then
/// the linear logical volumes of any LVM physical volume among them, numbered after them
/// (table `lvm`, named `vg/lv`).
pub fn volumes(disk: &mut dyn ReadAt) -> Result<Vec<Volume>> {
    let mut vols = partitions(disk)?;
    let mut next = vols.iter().map(|v| v.number).max().unwrap_or(0) + 1;
    let mut lvs = Vec::new();
    for pv in vols.iter_mut().filter(|v| v.fs == FsKind::Lvm) {
        match crate::lvm::logical_volumes(disk, pv.start, pv.size) {
            Ok(found) => {
                for lv in found {
                    let mut head = vec![0u8; lv.size.min(4096) as usize];
                    crate::lvm::read_mapped(disk, &lv.segments, &mut head, 0)?;
                    lvs.push(Volume {
                        number: next,
                        table: "lvm",
                        start: lv.segments[0].at,
                        size: lv.size,
                        name: lv.name,
                        fs: signature_of(&head),
                        map: lv.segments,
                    });
                    next += 1;
                }
            }
            // The other volumes stay readable; this one says why it has none.
            Err(e) => pv.name = format!("(its logical volumes cannot be read: {e})"),
        }
    }
    vols.extend(lvs);
    Ok(vols)
}

/// The partitions, or the whole disk as volume 0.
fn partitions(disk: &mut dyn ReadAt) -> Result<Vec<Volume>> {
    let size = disk.size();
    let mut sector0 = [0u8; 512];
    if size < 512 {
        return Ok(vec![]);
    }
    disk.read_at(&mut sector0, 0)?;
    let mbr_signature = sector0[510..512] == [0x55, 0xAA];
    let protective = mbr_signature && (0..4).any(|i| sector0[446 + 16 * i + 4] == 0xEE);
    let mut found: Vec<(u32, &'static str, u64, u64, String)> = Vec::new();
    if protective {
        check_gpt_header(disk)?;
        let gpt = guarded("GPT partition table", || {
            let mut r = Slice::new(&mut *disk, 0, size);
            gptman::GPT::find_from(&mut r)
                .map_err(|e| Error::corrupt("GPT partition table", e.to_string()))
        })?;
        for (n, p) in gpt.iter().filter(|(_, p)| p.is_used()) {
            let start = p.starting_lba.checked_mul(gpt.sector_size);
            let end = p
                .ending_lba
                .checked_add(1)
                .and_then(|e| e.checked_mul(gpt.sector_size));
            match (start, end) {
                (Some(s), Some(e)) if s < e && e <= size => {
                    found.push((n, "gpt", s, e - s, p.partition_name.as_str().to_string()))
                }
                _ => {
                    return Err(Error::corrupt(
                        format!("GPT partition {n}"),
                        format!(
                            "sectors {}..={} do not lie within the {size}-byte disk",
                            p.starting_lba, p.ending_lba
                        ),
                    ));
                }
            }
        }
    } else if mbr_signature && looks_like_mbr(&sector0, size) {
        let mbr = guarded("MBR partition table", || {
            let mut r = Slice::new(&mut *disk, 0, size);
            mbrman::MBR::read_from(&mut r, 512)
                .map_err(|e| Error::corrupt("MBR partition table", e.to_string()))
        })?;
        for (n, p) in mbr.iter().filter(|(_, p)| p.is_used()) {
            // The extended partition only holds the logical ones.
            if matches!(p.sys, 0x05 | 0x0F | 0x85) {
                continue;
            }
            let s = u64::from(p.starting_lba) * 512;
            let len = u64::from(p.sectors) * 512;
            if len == 0 || s + len > size {
                return Err(Error::corrupt(
                    format!("MBR partition {n}"),
                    format!(
                        "sectors {}+{} do not lie within the {size}-byte disk",
                        p.starting_lba, p.sectors
                    ),
                ));
            }
            found.push((n as u32, "mbr", s, len, String::new()));
        }
    }
    if found.is_empty() {
        found.push((0, "none", 0, size, String::new()));
    }
    found
        .into_iter()
        .map(|(number, table, start, size, name)| {
            let fs = signature(disk, start, size)?;
            Ok(Volume {
                number,
                table,
                start,
                size,
                name,
                fs,
                map: Vec::new(),
            })
        })
        .collect()
}

/// Refuses a GPT header that claims an absurd table before the parser allocates it.
fn check_gpt_header(disk: &mut dyn ReadAt) -> Result<()> {
    for sector in [512u64, 4096] {
        let mut h = [0u8; 92];
        if disk.read_at(&mut h, sector).is_err() || &h[..8] != b"EFI PART" {
            continue;
        }
        let entries = u32::from_le_bytes(h[80..84].try_into().expect("4"));
        let entry_size = u32::from_le_bytes(h[84..88].try_into().expect("4"));
        if entries > MAX_GPT_ENTRIES || !(128..=4096).contains(&entry_size) {
            return Err(Error::corrupt(
                "GPT partition table",
                format!(
                    "the header claims {entries} entries of {entry_size} bytes (at most {MAX_GPT_ENTRIES} of 128-4096 bytes are read)"
                ),
            ));
        }
        return Ok(());
    }
    Err(Error::corrupt(
        "GPT partition table",
        "a protective MBR but no GPT header at sector 1",
    ))
}

/// A boot sector with the 55AA mark is also what FAT and NTFS volumes start with: it is a
/// partition table only when its entries are plausible (status 0 or 0x80, inside the disk).
fn looks_like_mbr(s: &[u8; 512], size: u64) -> bool {
    let mut any = false;
    for i in 0..4 {
        let e = &s[446 + 16 * i..446 + 16 * (i + 1)];
        if e[0] != 0 && e[0] != 0x80 {
            return false;
        }
        let start = u64::from(u32::from_le_bytes(e[8..12].try_into().expect("4")));
        let sectors = u64::from(u32::from_le_bytes(e[12..16].try_into().expect("4")));
        if e[4] != 0 {
            if start == 0 || (start + sectors) * 512 > size {
                return false;
            }
            any = true;
        }
    }
    any
}

/// The file system a volume holds, from the signatures at its start.
fn signature(disk: &mut dyn ReadAt, start: u64, size: u64) -> Result<FsKind> {
    let n = size.min(4096) as usize;
    let mut b = vec![0u8; n];
    disk.read_at(&mut b, start)?;
    Ok(signature_of(&b))
}

/// The file system whose signatures `b` (a volume's first 4 KiB) holds.
fn signature_of(b: &[u8]) -> FsKind {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        FsKind::Ext
    } else if at(0, b"XFSB") {
        FsKind::Xfs
    } else if at(3, b"NTFS    ") {
        FsKind::Ntfs
    } else if at(54, b"FAT1") || at(82, b"FAT32") {
        FsKind::Vfat
    } else if at(512, b"LABELONE") {
        FsKind::Lvm
    } else if at(4086, b"SWAPSPACE2") {
        FsKind::Swap
    } else {
        FsKind::Unknown
    }
}
