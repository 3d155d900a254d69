//! libvirt domains, through `virsh`: QMP commands pass through libvirt's monitor connection
//! (`qemu-monitor-command`), guest-agent commands through its agent channel
//! (`qemu-agent-command`), and the domain XML is the VM's definition. kura thus drives a
//! libvirt VM with the same QMP steps as a plain QEMU one.
//!
//! What virsh prints is parsed as JSON or XML and checked; its errors are reported as they
//! are.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// A libvirt domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The domain's name.
    pub name: String,
    /// The connection URI (`qemu:///system` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// A disk of a domain as its XML names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlDisk {
    /// The guest device (`vda`).
    pub target: String,
    /// The device alias QEMU knows (`virtio-disk0`), in live XML.
    pub alias: Option<String>,
    /// The image file.
    pub file: Option<String>,
}

impl Domain {
    /// A domain on `uri` (default `qemu:///system`).
    pub fn new(name: &str, uri: Option<&str>) -> Result<Domain> {
        if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
            return Err(Error::Invalid(format!(
                "{name:?} is not a libvirt domain name"
            )));
        }
        Ok(Domain {
            name: name.to_string(),
            uri: uri.map(str::to_string),
        })
    }

    /// Runs `virsh [-c URI] ARGS`; returns its standard output.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("virsh");
        cmd.arg("-q");
        if let Some(u) = &self.uri {
            cmd.args(["-c", u]);
        }
        let out = cmd.args(args).output().map_err(|e| Error::Tool {
            tool: "virsh",
            path: self.name.clone().into(),
            message: format!("cannot run virsh (install libvirt-clients): {e}"),
        })?;
        if !out.status.success() {
            return Err(Error::Libvirt(format!(
                "domain {}: virsh {}: {}",
                self.name,
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One QMP command through libvirt's monitor; the whole answer (`return` or `error`).
    pub fn monitor(&self, command: &Value) -> Result<Value> {
        let text = self.virsh(&["qemu-monitor-command", &self.name, &command.to_string()])?;
        parse(&text)
    }

    /// One guest-agent command through libvirt's agent channel, waiting up to `timeout`.
    pub fn agent(&self, command: &Value, timeout: Duration) -> Result<Value> {
        let secs = timeout.as_secs().max(1).to_string();
        let text = self
            .virsh(&[
                "qemu-agent-command",
                &self.name,
                "--timeout",
                &secs,
                &command.to_string(),
            ])
            .map_err(|e| Error::Agent(e.to_string()))?;
        parse(&text).map_err(|e| Error::Agent(e.to_string()))
    }

    /// The value (base64) of a libvirt secret; fails for a private secret.
    pub fn secret_value(&self, uuid: &str) -> Result<String> {
        Ok(self.virsh(&["secret-get-value", uuid])?.trim().to_string())
    }

    /// The security models libvirt confines its QEMU processes with (`apparmor`, `selinux`;
    /// none listed, or `none`, when it does not).
    pub fn security_models(&self) -> Result<Vec<String>> {
        let caps = self.virsh(&["capabilities"])?;
        let doc = roxmltree::Document::parse(&caps)
            .map_err(|e| Error::Libvirt(format!("unreadable capabilities: {e}")))?;
        Ok(doc
            .descendants()
            .filter(|n| {
                n.has_tag_name("model") && n.parent().is_some_and(|p| p.has_tag_name("secmodel"))
            })
            .filter_map(|n| n.text().map(|t| t.trim().to_string()))
            // DAC is plain file ownership, which kura handles (see `qemu_ids`).
            .filter(|m| !m.is_empty() && m != "none" && m != "dac")
            .collect())
    }

    /// The user and group libvirt runs QEMU as (the DAC model's base label), when it says.
    pub fn qemu_ids(&self) -> Option<(u32, u32)> {
        let caps = self.virsh(&["capabilities"]).ok()?;
        let doc = roxmltree::Document::parse(&caps).ok()?;
        let label = doc
            .descendants()
            .filter(|n| {
                n.has_tag_name("baselabel") && matches!(n.attribute("type"), Some("kvm" | "qemu"))
            })
            .find_map(|n| n.text())?;
        // "+64055:+64055"
        let (u, g) = label.trim().split_once(':')?;
        Some((
            u.trim_start_matches('+').parse().ok()?,
            g.trim_start_matches('+').parse().ok()?,
        ))
    }

    /// `running`, `shut off`, `paused`, ...
    pub fn state(&self) -> Result<String> {
        Ok(self.virsh(&["domstate", &self.name])?.trim().to_string())
    }

    /// The live domain XML (with device aliases).
    pub fn xml(&self) -> Result<String> {
        self.virsh(&["dumpxml", &self.name])
    }

    /// The persistent definition, without runtime details: what a copy is defined from.
    pub fn inactive_xml(&self) -> Result<String> {
        self.virsh(&["dumpxml", "--inactive", &self.name])
    }
}

fn parse(text: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| Error::Libvirt(format!("unreadable answer from virsh: {e}")))?;
    if !v.is_object() {
        return Err(Error::Libvirt(
            "an answer from virsh that is not an object".into(),
        ));
    }
    Ok(v)
}

/// The disks of a domain XML (`<disk device='disk'>` with a target).
pub fn xml_disks(xml: &str) -> Result<Vec<XmlDisk>> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Libvirt(format!("unreadable domain XML: {e}")))?;
    let mut out = Vec::new();
    for d in doc.descendants().filter(|n| n.has_tag_name("disk")) {
        if d.attribute("device").is_some_and(|v| v != "disk") {
            continue;
        }
        let child = |tag: &str| d.children().find(|c| c.has_tag_name(tag));
        let Some(target) = child("target").and_then(|t| t.attribute("dev")) else {
            continue;
        };
        out.push(XmlDisk {
            target: target.to_string(),
            alias: child("alias")
                .and_then(|a| a.attribute("name"))
                .map(str::to_string),
            file: child("source")
                .and_then(|s| s.attribute("file"))
                .map(str::to_string),
        });
    }
    Ok(out)
}

/// The UUID of the libvirt secret that unlocks the encrypted disk `target`, if any.
pub fn disk_secret_uuid(xml: &str, target: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let disk = doc.descendants().find(|d| {
        d.has_tag_name("disk")
            && d.children()
                .any(|c| c.has_tag_name("target") && c.attribute("dev") == Some(target))
    })?;
    disk.descendants()
        .find(|n| {
            n.has_tag_name("secret") && n.parent().is_some_and(|p| p.has_tag_name("encryption"))
        })
        .and_then(|n| n.attribute("uuid"))
        .map(str::to_string)
}

/// Whether the domain XML gives the VM a guest-agent channel.
pub fn has_agent_channel(xml: &str) -> bool {
    roxmltree::Document::parse(xml).is_ok_and(|doc| {
        doc.descendants().any(|n| {
            n.has_tag_name("target") && n.attribute("name") == Some("org.qemu.guest_agent.0")
        })
    })
}

/// The definition of a copy of a domain: new name, no UUID and no MAC addresses (libvirt
/// makes new ones), each disk's file replaced, and every other file the XML names (serial
/// logs, sockets) moved into `dir` under the new name.
pub fn clone_xml(
    xml: &str,
    name: &str,
    disks: &[(String, std::path::PathBuf)],
    plain: &[String],
    dir: &std::path::Path,
) -> Result<String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| Error::Libvirt(format!("unreadable domain XML: {e}")))?;
    // Edits as (byte range, replacement), applied from the end.
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let root = doc.root_element();
    for n in root.children().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "name" => edits.push((n.range(), format!("<name>{}</name>", escape(name)))),
            "uuid" => edits.push((n.range(), String::new())),
            _ => {}
        }
    }
    for n in doc.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "mac" if n.parent().is_some_and(|p| p.has_tag_name("interface")) => {
                edits.push((n.range(), String::new()))
            }
            // A disk restored decrypted no longer needs its secret.
            "encryption" => {
                let disk = n.ancestors().find(|a| a.has_tag_name("disk"));
                let file = disk.and_then(|d| {
                    d.descendants()
                        .find(|c| c.has_tag_name("source"))
                        .and_then(|s| s.attribute("file"))
                });
                if file.is_some_and(|f| plain.iter().any(|p| p == f)) {
                    edits.push((n.range(), String::new()));
                }
            }
            "source" => {
                for a in n.attributes() {
                    if !matches!(a.name(), "file" | "path") {
                        continue;
                    }
                    let new = match disks.iter().find(|(o, _)| o == a.value()) {
                        Some((_, p)) => p.display().to_string(),
                        None if a.name() == "path" => {
                            let base = std::path::Path::new(a.value())
                                .file_name()
                                .map(|b| b.to_string_lossy().into_owned())
                                .unwrap_or_else(|| "file".into());
                            dir.join(format!("{name}.{base}")).display().to_string()
                        }
                        None => {
                            return Err(Error::Invalid(format!(
                                "the domain uses file {} that is not one of its backed-up disks; restore its disks with `kura restore disks` and define the copy by hand",
                                a.value()
                            )));
                        }
                    };
                    edits.push((a.range_value(), escape(&new)));
                }
            }
            _ => {}
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0.start));
    let mut out = xml.to_string();
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu'>
  <name>web</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web.qcow2'/><target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>
    <serial type='file'><source path='/var/log/web.console'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"#;

    #[test]
    fn disks_and_agent_channel_are_read_from_the_xml() {
        let d = xml_disks(XML).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].target, "vda");
        assert_eq!(d[0].alias.as_deref(), Some("virtio-disk0"));
        assert_eq!(
            d[0].file.as_deref(),
            Some("/var/lib/libvirt/images/web.qcow2")
        );
        assert!(has_agent_channel(XML));
        assert!(xml_disks("<domain").is_err());
    }

    #[test]
    fn a_copy_has_its_own_name_disks_and_files_and_no_uuid_or_mac() {
        let disks = vec![(
            "/var/lib/libvirt/images/web.qcow2".to_string(),
            std::path::PathBuf::from("/r/vda.qcow2"),
        )];
        let x = clone_xml(XML, "web-copy", &disks, &[], std::path::Path::new("/r")).unwrap();
        assert!(x.contains("<name>web-copy</name>"), "{x}");
        assert!(
            !x.contains("<uuid>") && !x.contains("52:54:00:aa:bb:cc"),
            "{x}"
        );
        assert!(x.contains("file='/r/vda.qcow2'"), "{x}");
        assert!(x.contains("path='/r/web-copy.web.console'"), "{x}");
        assert!(!x.contains("/var/lib/libvirt/images"), "{x}");
        assert!(roxmltree::Document::parse(&x).is_ok());
    }
}
