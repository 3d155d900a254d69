//! How results look as text. Every renderer takes the JSON document a command prints with
//! `--output json`, so a command shows the same thing whether it ran on the home or through
//! `--server`.

use serde_json::Value;

use crate::output::{Table, size};

/// A job or recovery point id in tables: its short form, which every command accepts.
/// Renders an answer of the API as text.
pub type View = fn(&Value) -> String;

fn short(v: &Value) -> String {
    kura_catalog::short_id(&s(v)).to_string()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The zone tables show times in (`--tz`, else this machine's zone).
static ZONE: std::sync::OnceLock<jiff::tz::TimeZone> = std::sync::OnceLock::new();

/// Sets the zone for times in tables: an IANA name, or the machine's zone when `None`.
pub fn set_zone(name: Option<&str>) -> anyhow::Result<()> {
    let tz = match name {
        Some(n) => jiff::tz::TimeZone::get(n).map_err(|e| {
            anyhow::anyhow!("--tz {n:?} is not a time zone (use an IANA name such as Europe/Berlin, or UTC): {e}")
        })?,
        None => jiff::tz::TimeZone::system(),
    };
    let _ = ZONE.set(tz);
    Ok(())
}

/// An instant as tables show it: `2026-03-10 11:17:00 CET` in the display zone. Anything
/// that is not one of kura's UTC instants (`...Z`) is shown as it is.
pub(crate) fn when(v: &Value) -> String {
    let Some(text) = v.as_str() else {
        return s(v);
    };
    local_time(text).unwrap_or_else(|| text.to_string())
}

fn local_time(text: &str) -> Option<String> {
    if !text.ends_with('Z') {
        return None;
    }
    let t: jiff::Timestamp = text.parse().ok()?;
    let tz = ZONE.get_or_init(jiff::tz::TimeZone::system).clone();
    Some(t.to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S %Z").to_string())
}

/// A job log line with its leading instant in the display zone.
fn log_line(line: &Value) -> String {
    let text = s(line);
    match text.split_once(' ') {
        Some((stamp, rest)) => match local_time(stamp) {
            Some(t) => format!("{t} {rest}"),
            None => text,
        },
        None => text,
    }
}

fn sz(v: &Value) -> String {
    size(v.as_u64().unwrap_or(0))
}

fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// `kura item protect`.
pub fn protected(i: &Value) -> String {
    format!(
        "protected {} as item {} (policy {}, format {})\n",
        s(&i["source"]),
        s(&i["name"]),
        s(&i["policy"]),
        item_format(i)
    )
}

/// An item's pinned format as one phrase: `qcow2`, `qcow2 on /base.raw (raw)`, or `-`.
pub fn item_format(i: &Value) -> String {
    if i["spec"]["kind"] == "files" {
        let ex: Vec<String> = rows(&i["spec"]["exclude"]).map(s).collect();
        let mut text = String::from("directory tree");
        if !ex.is_empty() {
            text += &format!(", excluding {}", ex.join(" "));
        }
        if let Some(snap) = i["spec"]["snapshot"].as_str() {
            text += &format!(", read from a {snap} snapshot");
        }
        return text;
    }
    if i["spec"]["kind"] == "vm" {
        let ex: Vec<String> = rows(&i["spec"]["exclude"]).map(s).collect();
        return format!(
            "vm: {}",
            rows(&i["spec"]["disks"])
                .map(|d| {
                    let n = s(&d["name"]);
                    if ex.contains(&n) {
                        format!("{n} excluded")
                    } else {
                        format!("{n} {}", s(&d["format"]))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let doc = &i["spec"]["format"];
    if !doc.is_object() {
        return "-".into();
    }
    let mut out = s(&doc["format"]);
    for b in rows(&doc["backing"]) {
        out.push_str(&format!(" on {} ({})", s(&b["path"]), s(&b["format"])));
    }
    out
}

/// `kura item list`.
pub fn item_list(v: &Value) -> String {
    if rows(v).next().is_none() {
        return "no items yet; protect one with `kura item protect disk IMAGE --vault VAULT` or `kura item protect vm ...`\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "VAULT",
        "PROTECTION",
        "LAST BACKUP",
        "HEALTH",
        "POLICY",
        "SOURCE",
    ]);
    for i in rows(v) {
        let issues = i["health_details"].as_array().map_or(0, Vec::len);
        let health = match i["damaged_points"].as_u64() {
            Some(d) if d > 0 => format!("{} ({d} damaged point(s))", s(&i["health_status"])),
            _ if issues > 0 => format!(
                "{} ({issues} issue(s): kura item show {})",
                s(&i["health_status"]),
                s(&i["name"])
            ),
            _ => s(&i["health_status"]),
        };
        t.row(vec![
            s(&i["name"]),
            s(&i["kind"]),
            s(&i["vault"]),
            s(&i["protection_state"]),
            s(&i["last_backup_status"]),
            health,
            s(&i["policy"]),
            s(&i["source"]),
        ]);
    }
    t.render()
}

/// `kura item show` and the protection commands.
pub fn item_status(st: &Value) -> String {
    let mut out = format!(
        "item              {}\nid                {}\nkind              {}\nvault             {}\npolicy            {}\nsource            {}{}\nprotection state  {}\nlast backup       {}\nhealth            {}\nrecovery points   {}\n",
        s(&st["name"]),
        s(&st["id"]),
        s(&st["kind"]),
        s(&st["vault"]),
        if st["policy"].is_null() {
            "-".into()
        } else {
            s(&st["policy"])
        },
        s(&st["source"]),
        if st["source_present"] == true {
            ""
        } else {
            "  (MISSING)"
        },
        s(&st["protection_state"]),
        s(&st["last_backup_status"]),
        s(&st["health_status"]),
        s(&st["recovery_points"]),
    );
    out += &format!("format            {}\n", item_format(st));
    if let Some(a) = st["agent_status"].as_str() {
        out += &format!("guest agent       {a}\n");
    }
    for d in rows(&st["health_details"]) {
        out += &format!("  ! {}\n", s(d));
    }
    if let Some(rp) = st["latest_recovery_point"].as_object() {
        out += &format!(
            "latest            {} at {}\n",
            s(&rp["id"]),
            when(&rp["time"])
        );
    }
    if !st["next_backup"].is_null() {
        out += &format!("next backup       {}\n", when(&st["next_backup"]));
    }
    if !st["purge_at"].is_null() {
        out += &format!(
            "purged at         {} unless undeleted\n",
            when(&st["purge_at"])
        );
    }
    out
}

/// `kura backup now`.
pub fn backup(r: &Value) -> String {
    let mut out = format!(
        "job {} completed\nrecovery point {} ({})\n",
        s(&r["job_id"]),
        s(&r["rp_id"]),
        s(&r["tier"])
    );
    if r["transfer"] == "Completed" {
        out += &format!(
            "  {} of data, {} read, {} new chunks ({} stored), {}\n",
            sz(&r["logical_size"]),
            sz(&r["read_bytes"]),
            s(&r["new_chunks"]),
            sz(&r["new_stored_bytes"]),
            if r["incremental"] == true {
                "incremental"
            } else {
                "full"
            }
        );
    } else {
        out += &format!(
            "  transfer {}: {}\n",
            s(&r["transfer"]),
            s(&r["transfer_detail"])
        );
    }
    out
}

/// `kura rp list`.
pub fn rp_list(v: &Value) -> String {
    let mut t = Table::new(&[
        "ID",
        "TIME",
        "LOGICAL",
        "STORED",
        "CONSISTENCY",
        "TIER",
        "TAGS",
        "EXPIRES",
    ]);
    for r in rows(v) {
        let expires = if r["expires"].is_null() {
            "never".into()
        } else {
            when(&r["expires"])
        };
        t.row(vec![
            short(&r["id"]),
            when(&r["time"]),
            sz(&r["logical_size"]),
            sz(&r["stored_size"]),
            s(&r["consistency"]),
            s(&r["tier"]),
            s(&r["tags"]),
            expires,
        ]);
    }
    t.render()
}

/// `kura restore disk`.
pub fn restore(r: &Value) -> String {
    format!(
        "job {} completed\nrestored recovery point {} to {} ({}{}, {}; {} written)\n",
        s(&r["job_id"]),
        s(&r["rp_id"]),
        s(&r["target"]),
        s(&r["format"]),
        if r["encrypted"] == true {
            " encrypted with LUKS and the source disk's passphrase"
        } else {
            ""
        },
        sz(&r["size"]),
        sz(&r["bytes_written"])
    )
}

/// `kura restore disks`: one report per disk.
pub fn restore_disks(r: &Value) -> String {
    rows(r).map(restore).collect()
}

/// `kura restore vm`.
pub fn restore_vm(r: &Value) -> String {
    let mut out = String::new();
    for d in rows(&r["disks"]) {
        out += &restore(d);
    }
    for b in rows(&r["blank_disks"]) {
        out += &format!("blank disk {} (excluded from backups)\n", s(b));
    }
    if r["mode"] == "as-new" {
        out += &format!(
            "new VM {}: start it with {}\n",
            s(&r["name"]),
            s(&r["script"])
        );
        if !r["qmp"].is_null() {
            out += &format!("  QMP socket   {}\n", s(&r["qmp"]));
        }
        if !r["qga"].is_null() {
            out += &format!("  agent socket {}\n", s(&r["qga"]));
        }
        if !r["pid"].is_null() {
            out += &format!("  started, process {}\n", s(&r["pid"]));
        }
    } else {
        out += &format!(
            "the disks of VM {} now hold recovery point {}\n",
            s(&r["name"]),
            s(&r["rp_id"])
        );
        for c in rows(&r["safety_copies"]) {
            out += &format!(
                "  the previous image is kept as {} (remove it once the VM runs well)\n",
                s(c)
            );
        }
    }
    out
}

/// `kura verify`.
pub fn verify(r: &Value) -> String {
    let mut out = format!(
        "job {}: checked {} recovery point(s), {} chunk(s)\n",
        s(&r["job_id"]),
        s(&r["recovery_points"]),
        s(&r["chunks_checked"])
    );
    let problems: Vec<&Value> = rows(&r["problems"]).collect();
    if problems.is_empty() {
        out += "all data verified\n";
    } else {
        for p in &problems {
            out += &format!(
                "{} {}: {}\n  used by recovery points: {}\n",
                s(&p["object"]),
                s(&p["problem"]).to_uppercase(),
                s(&p["detail"]),
                rows(&p["recovery_points"])
                    .map(s)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out += &format!("{} problem(s) found\n", problems.len());
    }
    let healed: Vec<String> = rows(&r["healed"]).map(s).collect();
    if !healed.is_empty() {
        out += &format!(
            "healed by backups since the last verify: {} chunk(s)\n",
            healed.len()
        );
        for h in healed {
            out += &format!("  {h}\n");
        }
    }
    let repaired: Vec<String> = rows(&r["repaired"]).map(s).collect();
    if !repaired.is_empty() {
        out += &format!(
            "repaired from the other location: {} object(s)\n",
            repaired.len()
        );
        for o in repaired {
            out += &format!("  {o}\n");
        }
    }
    for v in rows(&r["not_verified"]) {
        out += &format!("NOT VERIFIED: {}\n", s(v));
    }
    let snaps: Vec<String> = rows(&r["snapshot_only"]).map(s).collect();
    if !snaps.is_empty() {
        out += &format!(
            "not verified: {} recovery point(s) exist only in the snapshot tier (no vault copy): {}\n",
            snaps.len(),
            snaps.join(", ")
        );
    }
    out
}

/// `kura job list`.
pub fn job_list(v: &Value) -> String {
    let mut t = Table::new(&["ID", "OPERATION", "TARGET", "STATUS", "STARTED", "PROGRESS"]);
    for j in rows(v) {
        t.row(vec![
            short(&j["id"]),
            s(&j["operation"]),
            s(&j["target"]),
            s(&j["status"]),
            when(&j["started"]),
            format!("{}/{}", sz(&j["bytes_done"]), sz(&j["bytes_total"])),
        ]);
    }
    t.render()
}

/// `kura job show`.
pub fn job_show(j: &Value) -> String {
    let mut out = format!(
        "job        {}\noperation  {}\ntarget     {}\nstatus     {}\nstarted    {}\nended      {}\nprogress   {} of {}\n",
        s(&j["id"]),
        s(&j["operation"]),
        s(&j["target"]),
        s(&j["status"]),
        when(&j["started"]),
        when(&j["ended"]),
        sz(&j["bytes_done"]),
        sz(&j["bytes_total"])
    );
    if !j["queued"].is_null() {
        let what = if j["status"] == "Queued" {
            "waiting for a free slot (max_jobs, max_jobs_per_vault)".to_string()
        } else {
            "then started when a slot was free".to_string()
        };
        out += &format!("queued     {} ({what})\n", when(&j["queued"]));
    }
    if !j["rate_bytes_per_sec"].is_null() {
        out += &format!("rate       {}/s\n", sz(&j["rate_bytes_per_sec"]));
    }
    if !j["eta_seconds"].is_null() {
        out += &format!("eta        {} s\n", s(&j["eta_seconds"]));
    }
    for t in rows(&j["tasks"]) {
        out += &format!(
            "{:10} {}{}\n",
            s(&t["name"]),
            s(&t["status"]),
            if t["detail"].is_null() {
                String::new()
            } else {
                format!(": {}", s(&t["detail"]))
            }
        );
    }
    if !j["rp_id"].is_null() {
        out += &format!("recovery point  {}\n", s(&j["rp_id"]));
    }
    if !j["error"].is_null() {
        out += &format!("error      {}\n", s(&j["error"]));
    }
    out += "log:\n";
    for l in rows(&j["log"]) {
        out += &format!("  {}\n", log_line(l));
    }
    out
}

/// `kura job cancel`.
pub fn job_status(j: &Value) -> String {
    format!("job {} is {}\n", s(&j["id"]), s(&j["status"]))
}

/// `kura usage`.
pub fn usage(u: &Value) -> String {
    let mut t = Table::new(&[
        "VAULT/ITEM",
        "STATE",
        "SOURCE SIZE",
        "INSTANCES",
        "POINTS",
        "DATA IN POINTS",
        "STORED",
        "SAVING",
    ]);
    for v in rows(u) {
        t.row(vec![
            s(&v["vault"]),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            sz(&v["logical_bytes"]),
            sz(&v["stored_bytes"]),
            format!("{:.2}", v["ratio"].as_f64().unwrap_or(0.0)),
        ]);
        for i in rows(&v["items"]) {
            t.row(vec![
                format!("  {}", s(&i["item"])),
                s(&i["state"]),
                sz(&i["protected_bytes"]),
                format!(
                    "{} {}",
                    s(&i["protected_instances"]),
                    s(&i["instance_tier"])
                ),
                s(&i["recovery_points"]),
                sz(&i["logical_bytes"]),
                sz(&i["stored_bytes"]),
                format!("{:.2}", i["ratio"].as_f64().unwrap_or(0.0)),
            ]);
        }
    }
    let mut out = t.render();
    for v in rows(u) {
        if let Some(why) = v["unreachable"].as_str() {
            out += &format!(
                "\nvault {}: storage unreachable ({why}); STORED is its last measurement\n",
                s(&v["vault"])
            );
        }
    }
    if rows(u).next().is_some() {
        out += "\nSOURCE SIZE     used bytes of the item's disks at its latest backup (what Azure bills as protected size)\n\
INSTANCES       protected instances by that size: small up to 50 GB, then one per started 500 GB\n\
DATA IN POINTS  used bytes summed over every recovery point, as if each were a full copy\n\
STORED          bytes in the vault's storage: for an item, what its backups added after dedup\n\
                and compression; for a vault, every chunk it holds now\n\
SAVING          DATA IN POINTS / STORED (2.00 = half the space full copies would take)\n";
    }
    out
}

/// `kura gc`.
/// `kura vault replicate`.
pub fn replicated(r: &Value) -> String {
    format!(
        "job {}: {} object(s) ({}) copied to {}, {} removed there\n",
        s(&r["job_id"]),
        s(&r["copied_objects"]),
        sz(&r["copied_bytes"]),
        s(&r["replica"]),
        s(&r["deleted_objects"])
    )
}

pub fn gc(r: &Value) -> String {
    let mut out = format!(
        "job {}: {} recovery point(s) reference {} of {} stored chunks\n{} newly marked, {} released, {} deleted ({}), {} waiting for their grace period or older writers\n",
        s(&r["job_id"]),
        s(&r["recovery_points"]),
        s(&r["referenced_chunks"]),
        s(&r["stored_chunks"]),
        s(&r["newly_doomed"]),
        s(&r["released"]),
        s(&r["deleted"]),
        sz(&r["freed_bytes"]),
        s(&r["waiting"])
    );
    if r["stale_uploads_removed"].as_u64().unwrap_or(0) > 0 {
        out += &format!(
            "{} partial upload(s) left by interrupted writers removed\n",
            s(&r["stale_uploads_removed"])
        );
    }
    out
}

/// `kura vault list`.
pub fn vault_list(v: &Value) -> String {
    if rows(v).next().is_none() {
        return "no vaults yet; create one with `kura vault create NAME` (or attach an existing one with `kura vault attach NAME --path DIR`)\n".into();
    }
    let mut t = Table::new(&[
        "NAME",
        "ITEMS",
        "ENCRYPTION",
        "CHUNK",
        "SOFT DELETE",
        "PATH",
    ]);
    for x in rows(v) {
        t.row(vec![
            s(&x["name"]),
            s(&x["items"]),
            s(&x["encryption"]),
            sz(&x["chunk_size"]),
            format!("{} ({} d)", s(&x["soft_delete"]), s(&x["soft_delete_days"])),
            s(&x["path"]),
        ]);
    }
    t.render()
}

/// `kura vault trend`.
pub fn vault_trend(t: &Value) -> String {
    let mut tab = Table::new(&["DAY", "STORED"]);
    for p in rows(&t["samples"]) {
        tab.row(vec![when(&p["at"]), sz(&p["stored_bytes"])]);
    }
    let mut out = if rows(&t["samples"]).next().is_some() {
        tab.render()
    } else {
        "no measurements yet: they are taken after each backup and garbage collection\n".into()
    };
    if let Some(f) = t["filesystem"].as_object() {
        out += &format!(
            "file system  {} of {} available\n",
            sz(&f["available_bytes"]),
            sz(&f["total_bytes"])
        );
    }
    out += &match t["growth_bytes_per_day"].as_f64() {
        Some(g) if g >= 0.0 => format!(
            "growth       {}/day (last 30 days)\n",
            sz(&Value::from(g as u64))
        ),
        Some(g) => format!(
            "growth       -{}/day (last 30 days)\n",
            sz(&Value::from((-g) as u64))
        ),
        None => "growth       not known yet (needs a day of measurements)\n".into(),
    };
    if !t["estimated_full"].is_null() {
        out += &format!("full         about {}\n", when(&t["estimated_full"]));
    }
    out
}

/// `kura vault show` (and create).
pub fn vault_show(v: &Value) -> String {
    let mut out = format!(
        "vault       {}\nid          {}\nlocation    {}\nchunk size  {}\nencryption  {}{}\nkey file    {}\nitems       {}\nsoft delete {} ({} days)\ncreated     {}\n",
        s(&v["name"]),
        s(&v["id"]),
        s(&v["path"]),
        sz(&v["chunk_size"]),
        s(&v["encryption"]),
        if v["cipher"].is_null() {
            String::new()
        } else {
            format!(" ({})", s(&v["cipher"]))
        },
        if v["key_file"].is_null() {
            "-".into()
        } else {
            s(&v["key_file"])
        },
        s(&v["items"]),
        s(&v["soft_delete"]),
        s(&v["soft_delete_days"]),
        when(&v["created"])
    );
    out += &match (s(&v["redundancy"]).as_str(), v["replica"].as_str()) {
        (kind @ ("zone" | "geo"), Some(replica)) => {
            format!("redundancy  {kind}, replica {replica}\n")
        }
        _ => "redundancy  local\n".to_string(),
    };
    let r = &v["replication"];
    if !r.is_null() {
        out += &match r["replicated_at"].as_str() {
            Some(_) => format!(
                "replication caught up {}; {} point(s), {} behind since\n",
                when(&r["replicated_at"]),
                s(&r["points_behind"]),
                sz(&r["bytes_behind"])
            ),
            None => "replication NEVER caught up: run `kura vault replicate` when the replica is reachable\n".into(),
        };
    }
    out += &match v["kit_exported"].as_str() {
        Some(_) => format!("recovery kit exported {}\n", when(&v["kit_exported"])),
        None => format!(
            "recovery kit NEVER EXPORTED: run `kura vault key export {} --to FILE`\n",
            s(&v["name"])
        ),
    };
    if !v["note"].is_null() {
        out += &format!("note: {}\n", s(&v["note"]));
    }
    out
}

/// `kura vault attach`.
/// `kura rp show`.
pub fn rp_show(m: &Value) -> String {
    let mut out = format!(
        "recovery point {}\nitem            {} ({})\ntime            {}\nconsistency     {}\ntags            {}\nexpires         {}\n",
        s(&m["rp_id"]),
        s(&m["item"]["name"]),
        s(&m["item"]["kind"]),
        when(&m["time"]),
        s(&m["consistency"]),
        rows(&m["tags"]).map(s).collect::<Vec<_>>().join(", "),
        if m["expires"].is_null() {
            "-".into()
        } else {
            when(&m["expires"])
        },
    );
    let mut t = Table::new(&["DISK", "SIZE", "CHUNKS", "HOLES", "FORMAT"]);
    for d in rows(&m["disks"]) {
        t.row(vec![
            s(&d["name"]),
            sz(&d["size"]),
            s(&d["chunks"]),
            s(&d["zero_chunks"]),
            s(&d["source_format"]),
        ]);
    }
    out += &t.render();
    if let Some(n) = m["definition"]["name"]["name"].as_str() {
        out += &format!("vm name         {n}\n");
    }
    if let Some(u) = m["definition"]["uuid"]["UUID"].as_str() {
        out += &format!("vm uuid         {u}\n");
    }
    out
}

/// `kura item precheck`.
pub fn precheck(r: &Value) -> String {
    let mut out = format!(
        "item {} ({}): {}\n",
        s(&r["item"]),
        s(&r["kind"]),
        if r["ready"] == true {
            "READY"
        } else {
            "NOT READY"
        }
    );
    for c in rows(&r["checks"]) {
        out += &format!(
            "  {:<4} {:<11} {}\n",
            if c["ok"] == true { "ok" } else { "FAIL" },
            s(&c["name"]),
            s(&c["detail"])
        );
    }
    out
}

/// `kura vault key export`.
pub fn kit_exported(r: &Value) -> String {
    format!(
        "wrote the recovery kit of vault {} to {} ({})\nprintable form (keep a copy on paper; the last group is a checksum):\n  {}\nwith the vault's storage, this kit restores everything: `kura vault attach {} --path DIR --recovery-kit FILE`\n",
        s(&r["vault"]),
        s(&r["exported_to"]),
        if r["protection"] == "plain" {
            "IN THE CLEAR: anyone with it can read every backup"
        } else {
            "sealed with the kit passphrase"
        },
        s(&r["printable"]),
        s(&r["vault"])
    )
}

pub fn attached(r: &Value) -> String {
    let mut out = format!(
        "attached vault {} from {}: {} item(s), {} recovery point(s)\n",
        s(&r["vault"]["name"]),
        s(&r["vault"]["path"]),
        rows(&r["items"]).count(),
        s(&r["recovery_points"])
    );
    for w in rows(&r["warnings"]) {
        out += &format!("warning: {}\n", s(w));
    }
    out
}

/// `kura policy list`.
pub fn policy_list(v: &Value) -> String {
    let mut t = Table::new(&["NAME", "FREQUENCY", "TIME ZONE", "ITEMS", "UPDATED"]);
    for p in rows(v) {
        let sch = &p["doc"]["schedule"];
        t.row(vec![
            s(&p["name"]),
            s(&sch["frequency"]),
            if sch["time_zone"].is_null() {
                "UTC".into()
            } else {
                s(&sch["time_zone"])
            },
            s(&p["items"]),
            when(&p["updated"]),
        ]);
    }
    t.render()
}

/// `kura policy show` / create / update.
pub fn policy_show(p: &Value) -> String {
    let p = if p["policy"].is_object() {
        &p["policy"]
    } else {
        p
    };
    format!(
        "policy {} ({} item(s))\n{}\n",
        s(&p["name"]),
        s(&p["items"]),
        serde_json::to_string_pretty(&p["doc"]).unwrap_or_default()
    )
}

/// `kura policy simulate`.
pub fn simulation(sim: &Value) -> String {
    let runs: Vec<&Value> = rows(&sim["runs"]).collect();
    let mut out = format!(
        "{} backup(s) from {} until {} ({})\n",
        runs.len(),
        s(&sim["from"]),
        s(&sim["until"]),
        s(&sim["time_zone"])
    );
    for r in runs {
        out += &format!("  {}  {}\n", when(&r["time"]), s(&r["tier"]));
    }
    let surviving: Vec<&Value> = rows(&sim["surviving"]).collect();
    out += &format!(
        "{} recovery point(s) still exist at {}:\n",
        surviving.len(),
        s(&sim["until"])
    );
    let mut t = Table::new(&["  TIME", "TAGS", "EXPIRES"]);
    for p in surviving {
        t.row(vec![
            format!("  {}", when(&p["time"])),
            s(&p["tags"]),
            when(&p["expires"]),
        ]);
    }
    out + &t.render()
}

/// `kura retention plan/apply`.
pub fn retention(plan: &Value, applied: bool) -> String {
    let mut t = Table::new(&["RECOVERY POINT", "TIME", "ACTION", "REASON"]);
    for e in rows(&plan["entries"]) {
        let action = if applied && e["action"] == "delete" {
            "deleted".into()
        } else {
            s(&e["action"])
        };
        t.row(vec![
            short(&e["rp_id"]),
            when(&e["time"]),
            action,
            s(&e["reason"]),
        ]);
    }
    t.render()
}

/// `kura token create` and `reset`: the secret, shown once.
pub fn new_token(t: &Value) -> String {
    let expires = match &t["expires"] {
        Value::Null => "never expires".to_string(),
        e => format!("expires {}", when(e)),
    };
    format!(
        "token {} ({expires}); its secret is shown only now:\n{}\n",
        s(&t["name"]),
        s(&t["token"])
    )
}

/// `kura token list`.
pub fn token_list(v: &Value) -> String {
    if rows(v).next().is_none() {
        return "no tokens: `kura server` makes the admin token at its first start\n".into();
    }
    let mut t = Table::new(&["NAME", "CREATED", "EXPIRES", "LAST USED"]);
    for r in rows(v) {
        let or = |v: &Value, d: &str| if v.is_null() { d.to_string() } else { when(v) };
        t.row(vec![
            s(&r["name"]),
            when(&r["created"]),
            or(&r["expires"], "never"),
            or(&r["last_used"], "never"),
        ]);
    }
    t.render()
}

/// `kura token revoke`.
pub fn token_revoked(v: &Value) -> String {
    format!("token {} revoked\n", s(&v["name"]))
}

/// `kura files volumes`.
pub fn volumes(v: &Value) -> String {
    let mut out = format!(
        "recovery point {}, disk {} ({})\n",
        s(&v["rp_id"]),
        s(&v["disk"]),
        sz(&v["size"])
    );
    let mut t = Table::new(&["VOLUME", "TABLE", "START", "SIZE", "FILE SYSTEM", "NAME"]);
    for x in rows(&v["volumes"]) {
        t.row(vec![
            s(&x["number"]),
            s(&x["table"]),
            s(&x["start"]),
            sz(&x["size"]),
            if x["readable"] == true {
                s(&x["fs"])
            } else {
                format!("{} (not readable yet)", s(&x["fs"]))
            },
            s(&x["name"]),
        ]);
    }
    out += &t.render();
    out
}

/// `kura files ls`: like `ls -l`.
pub fn file_listing(v: &Value) -> String {
    let line = |e: &Value| {
        let kind = match e["kind"].as_str() {
            Some("dir") => 'd',
            Some("symlink") => 'l',
            Some("block-device") => 'b',
            Some("char-device") => 'c',
            Some("fifo") => 'p',
            Some("socket") => 's',
            _ => '-',
        };
        let mode = e["mode"].as_u64().unwrap_or(0);
        let bits: String = (0..9)
            .map(|i| {
                let on = mode & (1 << (8 - i)) != 0;
                if on { ['r', 'w', 'x'][i % 3] } else { '-' }
            })
            .collect();
        let link = e["target"]
            .as_str()
            .map(|t| format!(" -> {t}"))
            .unwrap_or_default();
        format!(
            "{kind}{bits} {:>5} {:>5} {:>12} {} {}{link}\n",
            s(&e["uid"]),
            s(&e["gid"]),
            s(&e["size"]),
            s(&e["modified"]),
            s(&e["name"])
        )
    };
    let entries: Vec<&Value> = rows(&v["entries"]).collect();
    if v["entry"]["kind"] != "dir" {
        return line(&v["entry"]);
    }
    if entries.is_empty() {
        return format!("{} is empty\n", s(&v["entry"]["path"]));
    }
    entries.into_iter().map(line).collect()
}

/// `kura files get`.
pub fn restore_files(r: &Value) -> String {
    let mut out = format!(
        "job {} completed\nrestored {} file(s) ({} as hard links), {} director(ies), {} link(s) ({}) from recovery point {} into {}; {} chunk(s) fetched\n",
        s(&r["job_id"]),
        s(&r["files"]),
        r["hard_links"].as_u64().unwrap_or(0),
        s(&r["dirs"]),
        s(&r["links"]),
        sz(&r["bytes"]),
        s(&r["rp_id"]),
        s(&r["to"]),
        s(&r["fetched"]["chunks"])
    );
    for x in rows(&r["skipped"]) {
        out += &format!("skipped {}\n", s(x));
    }
    out
}
