//! The server against NBD clients kura did not write: libnbd's nbdinfo and nbdcopy, and
//! qemu-img (scripts/test installs libnbd-bin and qemu-utils).

use std::io;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_nbd::{Ended, Export, Extent, Factory, Listener, STATE_HOLE_ZERO, Stop, serve};

/// A 48 MiB disk of 1 MiB blocks (more than the largest request, so clients ask for status
/// more than once): odd blocks are holes, even ones hold bytes.
#[derive(Clone)]
struct Blocks(Arc<Vec<u8>>);

const BLOCK: u64 = 1 << 20;

fn disk() -> Blocks {
    let mut d = vec![0u8; 48 << 20];
    for (i, b) in d.iter_mut().enumerate() {
        if (i as u64 / BLOCK).is_multiple_of(2) {
            *b = (i % 251) as u8 | 1;
        }
    }
    Blocks(Arc::new(d))
}

impl Export for Blocks {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn extents(&mut self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let end = (at / BLOCK + 1) * BLOCK;
            let state = if (at / BLOCK).is_multiple_of(2) {
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

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn start(
    dir: &std::path::Path,
    deadline: Option<Instant>,
) -> (String, Stop, std::thread::JoinHandle<Ended>) {
    let sock = dir.join("nbd.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let d = disk();
    let factory: Factory = Arc::new(move || Ok(Box::new(d.clone()) as Box<dyn Export>));
    let stop = Stop::default();
    let s2 = stop.clone();
    let t = std::thread::spawn(move || {
        serve(Listener::Unix(l), "pt", factory, None, deadline, &s2).unwrap()
    });
    (format!("nbd+unix:///pt?socket={}", sock.display()), stop, t)
}

#[test]
fn nbdinfo_nbdcopy_and_qemu_img_read_the_export_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (uri, stop, t) = start(dir.path(), None);

    // The map: 48 runs alternating data and hole (libnbd merges nothing).
    let map = run(Command::new("nbdinfo").args(["--map", "--json", &uri]));
    let v: Vec<serde_like::Run> = serde_like::parse(&map);
    assert_eq!(v.len(), 48, "{map}");
    for (i, r) in v.iter().enumerate() {
        assert_eq!((r.offset, r.length), (i as u64 * BLOCK, BLOCK), "{map}");
        assert_eq!(r.kind, if i % 2 == 0 { 0 } else { 3 }, "{map}");
    }
    let info = run(Command::new("nbdinfo").arg(&uri));
    assert!(
        info.contains("is_read_only: true") && info.contains("can_multi_conn: true"),
        "{info}"
    );

    // qemu-img and nbdcopy, at the same time: bit-exact copies.
    let a = dir.path().join("qemu.raw");
    let b = dir.path().join("nbdcopy.raw");
    let mut q = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&a)
        .spawn()
        .unwrap();
    run(Command::new("nbdcopy").arg(&uri).arg(&b));
    assert!(q.wait().unwrap().success());
    let want = disk().0;
    assert_eq!(std::fs::read(&a).unwrap(), *want);
    assert_eq!(std::fs::read(&b).unwrap(), *want);
    // Holes stayed holes in qemu-img's copy (it skips what block status says is zero).
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&a).unwrap().blocks() * 512 < 30 << 20);

    // Writes are refused: the export says it is read-only, and qemu-io cannot write.
    let w = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 120 0 512", &uri])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        !w.status.success()
            || said.contains("ermission")
            || said.contains("read-only")
            || said.contains("Read-only"),
        "{said}"
    );
    assert!(
        !said.contains("wrote 512/512"),
        "a write went through: {said}"
    );
    stop.stop();
    assert_eq!(t.join().unwrap(), Ended::Stopped);
}

#[test]
fn at_its_deadline_the_export_ends_and_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (uri, _stop, t) = start(dir.path(), Some(Instant::now() + Duration::from_secs(2)));
    run(Command::new("nbdinfo").arg(&uri));
    assert_eq!(t.join().unwrap(), Ended::Expired);
    let o = Command::new("nbdinfo").arg(&uri).output().unwrap();
    assert!(!o.status.success(), "an expired export still answered");
}

/// Just enough JSON for nbdinfo's map (no serde in this crate).
mod serde_like {
    pub struct Run {
        pub offset: u64,
        pub length: u64,
        pub kind: u64,
    }

    fn field(obj: &str, name: &str) -> u64 {
        let at = obj
            .find(&format!("\"{name}\""))
            .unwrap_or_else(|| panic!("{name} in {obj}"));
        let rest = &obj[at + name.len() + 2..];
        let rest = rest.trim_start_matches([':', ' ']);
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().unwrap()
    }

    pub fn parse(json: &str) -> Vec<Run> {
        json.split('{')
            .skip(1)
            .filter(|o| o.contains("\"offset\""))
            .map(|o| Run {
                offset: field(o, "offset"),
                length: field(o, "length"),
                kind: field(o, "type"),
            })
            .collect()
    }
}
