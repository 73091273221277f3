//! Network namespaces owned by a test: created with `ip netns add`, entered
//! per thread with setns(2), and deleted in `Drop` so that a failing test
//! leaves nothing behind.

use std::{fs::File, os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, bail};

/// A network namespace that is deleted when dropped.
pub struct Netns {
    name: String,
}

/// Runs a command and fails with its stderr if it fails.
pub fn command(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates namespace `name` (it must not exist yet).
    pub fn create(name: &str) -> anyhow::Result<Self> {
        command("ip", &["netns", "add", name])?;
        let netns = Self { name: name.into() };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        command("ip", &full)
    }

    /// The MAC address of interface `dev`.
    pub fn mac(&self, dev: &str) -> anyhow::Result<String> {
        let output = Command::new("ip")
            .args(["-n", &self.name, "-j", "link", "show", "dev", dev])
            .output()
            .context("starting ip")?;
        let links: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("`ip -j link show dev {dev}` in {}", self.name))?;
        links[0]["address"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no MAC address for {dev} in {}: {links}", self.name))
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        command("ip", &full)
    }

    /// Moves the calling thread into the namespace. Sockets it opens from
    /// then on belong to the namespace, whichever thread uses them later.
    pub fn join_current_thread(&self) -> anyhow::Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: a valid namespace fd; setns only changes this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("setns into {path}"));
        }
        Ok(())
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its result.
    pub fn enter<T: Send>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.join_current_thread()?;
                    f()
                })
                .join()
                .unwrap_or_else(|_| bail!("thread in namespace {} panicked", self.name))
        })
    }

    /// Writes a sysctl inside the namespace (e.g. `net/ipv4/conf/all/arp_ignore`).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{key}");
        self.enter(|| std::fs::write(&path, value).with_context(|| format!("writing {path}")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = command("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: could not delete namespace {}: {err:#}", self.name);
        }
    }
}
