//! The desk and the gate on any host: a data plane in memory that can be
//! made to fail at each step, a neighbourhood that answers from a table,
//! and records, journal and config file in a directory of the test's own.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use super::*;
use crate::{
    config::{MacAddr, Reach},
    daemon::{
        gate::Step,
        records::{Record, RecordDir},
    },
    dataplane::state::DesiredState,
};

/// A data plane in memory: two banks, a generation, and a step at which
/// it fails next.
#[derive(Default)]
struct Memory {
    banks: [Option<DesiredState>; 2],
    bank: u32,
    generation: u64,
    installed: Option<DesiredState>,
    /// Fails at this step (`Stage`, `Verify` or `Commit`) once; at
    /// `Verify`, the staged bank holds other tables than were written.
    fail: Option<Step>,
}

impl Memory {
    fn fails(&mut self, step: Step) -> anyhow::Result<()> {
        if self.fail == Some(step) {
            self.fail = None;
            anyhow::bail!("the kernel said no at {step}");
        }
        Ok(())
    }
}

impl Install for Memory {
    type Staged = (DesiredState, u32);

    fn installed(&self) -> Option<&DesiredState> {
        self.installed.as_ref()
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn stage(&mut self, state: &DesiredState) -> anyhow::Result<Self::Staged> {
        self.fails(Step::Stage)?;
        let bank = (self.bank + 1) % 2;
        let mut written = state.clone();
        if self.fail == Some(Step::Verify) {
            // The kernel holds other tables than were written.
            self.fail = None;
            written
                .vips
                .iter_mut()
                .for_each(|v| v.table.table.reverse());
        }
        self.banks[bank as usize] = Some(written);
        Ok((state.clone(), bank))
    }

    fn verify(&self, (state, bank): &Self::Staged) -> anyhow::Result<()> {
        if self.banks[*bank as usize].as_ref() != Some(state) {
            anyhow::bail!("bank {bank} holds other tables");
        }
        Ok(())
    }

    fn bank((_, bank): &Self::Staged) -> u32 {
        *bank
    }

    fn commit(&mut self, (state, bank): Self::Staged) -> anyhow::Result<()> {
        self.fails(Step::Commit)?;
        self.bank = bank;
        self.generation += 1;
        self.installed = Some(state);
        Ok(())
    }
}

/// Neighbours answered from a table.
#[derive(Default)]
struct Lan {
    macs: HashMap<IpAddr, MacAddr>,
    unreachable: bool,
}

impl Neighbourhood for Lan {
    fn macs(&self, wanted: &[(IpAddr, Reach)]) -> anyhow::Result<HashMap<IpAddr, MacAddr>> {
        if self.unreachable {
            anyhow::bail!("netlink is gone");
        }
        Ok(wanted
            .iter()
            .filter_map(|(address, _)| Some((*address, *self.macs.get(address)?)))
            .collect())
    }

    fn is_local(&self, _: IpAddr) -> bool {
        true
    }
}

const VIP: &str = "198.18.100.1:80/tcp";

fn backend(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, i], 80))
}

/// A config of one VIP with backends 198.18.0.1.. at `weights`, each with
/// its MAC unless `resolved` is false; `extra` goes before the VIP.
fn config(weights: &[u32], extra: &str, resolved: bool) -> String {
    let mut text = format!(
        "interface = \"fl0\"\ntable_size = 1021\n{extra}\n[[vip]]\nname = \"web\"\n\
         address = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n"
    );
    for (i, weight) in (1u8..).zip(weights) {
        text += &format!("[[vip.backend]]\naddress = \"198.18.0.{i}\"\nweight = {weight}\n");
        if resolved {
            text += &format!("mac = \"02:00:00:00:00:{i:02x}\"\n");
        }
    }
    text
}

/// A desk over a data plane in memory that already holds `text`.
struct Rig {
    dir: PathBuf,
    desk: Desk<Memory>,
    lan: Lan,
}

impl Rig {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-desk-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the test");
        let config_path = dir.join("fulcrum.toml");
        std::fs::write(&config_path, text).expect("the config file");
        let records = RecordDir::new(&dir.join("state"), "fl0");
        let lan = Lan::default();
        let mut dataplane = Memory::default();
        let proposal = Proposal {
            text,
            force: false,
            persist: None,
            left_out: LeftOut::default(),
            clients: None,
        };
        let in_force = match gate::apply(&mut dataplane, &records, None, &proposal, &lan) {
            Ok(Verdict::Applied { in_force, .. }) => in_force,
            other => panic!("the first config installs: {other:?}"),
        };
        let journal = Journal::new(&dir.join("journal.jsonl"));
        let desk = Desk::new(dataplane, records, *in_force, (&config_path, journal));
        Self { dir, desk, lan }
    }

    fn change(&mut self, text: &str, door: Door) -> Decision {
        self.request(text, door, false, None, LeftOut::default())
    }

    fn request(
        &mut self,
        text: &str,
        door: Door,
        force: bool,
        if_generation: Option<u64>,
        left_out: LeftOut<'_>,
    ) -> Decision {
        let request = Request {
            text: text.to_string(),
            force,
            if_generation,
            door,
            clients: None,
        };
        self.desk.change(request, left_out, &self.lan)
    }

    fn file(&self) -> String {
        std::fs::read_to_string(self.desk.config_path()).expect("the config file")
    }

    /// The journal's lines: (source, result).
    fn journal(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.dir.join("journal.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).expect("JSON");
                (
                    entry["source"].as_str().unwrap_or_default().to_string(),
                    entry["result"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The record of the bank in use.
    fn live_record(&self) -> Record {
        self.desk
            .records()
            .read(self.desk.dataplane.bank)
            .expect("the live bank's record")
    }

    /// Each backend's slots in the installed table, by address.
    fn slots(&self) -> HashMap<SocketAddr, u32> {
        let state = self.desk.dataplane.installed().expect("installed");
        let vip = &state.vips[0];
        vip.backends
            .iter()
            .zip(&vip.table.slots)
            .map(|(b, &slots)| (b.addr, slots))
            .collect()
    }

    /// Everything that makes up the state in force.
    fn snapshot(&self) -> (u64, String, Option<DesiredState>, String, Record) {
        (
            self.desk.dataplane.generation(),
            self.desk.in_force().text.clone(),
            self.desk.dataplane.installed().cloned(),
            self.file(),
            self.live_record(),
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn api() -> Door {
    Door::Api(Some(0), "apply".into())
}

fn health(vips: &[&str]) -> Door {
    Door::Health(TableChange {
        details: vec!["a backend went down".into()],
        vips: vips.iter().map(ToString::to_string).collect(),
    })
}

/// Only `down` left out, by health checks.
fn down_only(down: &[Down]) -> LeftOut<'_> {
    LeftOut {
        down,
        ..LeftOut::default()
    }
}

fn codes(decision: &Decision) -> Vec<String> {
    match decision {
        Decision::Refused { problems, .. } => problems.iter().map(|p| p.code.to_string()).collect(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn every_door_applies_a_change_and_only_the_api_writes_the_file_back() {
    let doors = [
        api(),
        Door::Sighup,
        Door::FileChanged,
        Door::Start,
        Door::Neighbours,
        health(&[VIP]),
    ];
    for door in doors {
        let before = config(&[1, 1, 1], "", true);
        let mut rig = Rig::new(&before);
        let after = config(&[1, 1, 2], "", true);
        let decision = rig.change(&after, door.clone());
        let Decision::Applied { plan, generation } = decision else {
            panic!("{door:?}: {decision:?}");
        };
        assert_eq!(generation, 2, "{door:?}");
        assert!(plan.accepted());
        assert_eq!(rig.desk.in_force().text, after, "{door:?}");
        assert_eq!(
            rig.slots()[&backend(3)],
            511,
            "{door:?}: half of 1021, rounded up"
        );
        let written = matches!(door, Door::Api(..));
        assert_eq!(rig.file() == after, written, "{door:?}: written back");
        let record = rig.live_record();
        assert_eq!((record.generation, record.config), (2, after.clone()));
        assert_eq!(rig.journal(), [(door.name(), "applied".to_string())]);
    }
}

#[test]
fn the_text_in_force_changes_nothing_unless_the_door_changes_what_is_installed() {
    let text = config(&[1, 1], "", true);
    for door in [api(), Door::Sighup, Door::FileChanged, Door::Start] {
        let mut rig = Rig::new(&text);
        let decision = rig.change(&text, door.clone());
        assert!(
            matches!(decision, Decision::Unchanged { generation: 1 }),
            "{door:?}: {decision:?}"
        );
        assert!(rig.journal().is_empty(), "{door:?}: nothing journalled");
    }
    for door in [Door::Neighbours, health(&[])] {
        let mut rig = Rig::new(&text);
        let decision = rig.change(&text, door.clone());
        assert!(
            matches!(decision, Decision::Applied { generation: 2, .. }),
            "{door:?}: {decision:?}"
        );
    }
}

#[test]
fn a_change_planned_on_another_generation_is_stale() {
    let mut rig = Rig::new(&config(&[1, 1, 1], "", true));
    let before = rig.snapshot();
    let next = config(&[1, 1, 2], "", true);
    let decision = rig.request(&next, api(), false, Some(7), LeftOut::default());
    assert!(matches!(
        decision,
        Decision::Stale {
            generation: 1,
            expected: 7
        }
    ));
    assert_eq!(rig.snapshot(), before);
    assert!(rig.journal().is_empty());
    let decision = rig.request(&next, api(), false, Some(1), LeftOut::default());
    assert!(matches!(decision, Decision::Applied { generation: 2, .. }));
}

#[test]
fn an_api_change_does_not_overwrite_an_edit_of_the_file_not_in_force() {
    let mut rig = Rig::new(&config(&[1, 1], "", true));
    let edit = config(&[1, 1, 1], "", true);
    std::fs::write(rig.desk.config_path(), &edit).expect("the edit");
    let decision = rig.change(&config(&[2, 3], "", true), api());
    assert!(matches!(decision, Decision::FileDiffers(_)), "{decision:?}");
    assert_eq!(rig.file(), edit, "the edit is kept");
    assert_eq!(rig.desk.dataplane.generation(), 1);
    // Applying the edit itself overwrites nothing.
    let decision = rig.change(&edit, api());
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
}

#[test]
fn every_refusal_leaves_the_state_in_force_and_is_journalled() {
    let base = config(&[1, 1, 1, 1], "", true);
    let cases: [(&str, String, &str); 6] = [
        ("not TOML", "[[vip".to_string(), "syntax"),
        (
            "one backend above its share",
            config(&[9, 1, 1, 1], "", true),
            "concentration",
        ),
        (
            "too few backends",
            config(&[1, 0, 0, 0], "", true),
            "too-few-backends",
        ),
        (
            "too many flows move at once",
            config(&[1, 1, 1, 1, 1, 1, 1], "", true),
            "blast-radius-flows",
        ),
        (
            "a setting that needs a restart",
            base.replace("interface = \"fl0\"", "interface = \"fl1\""),
            "needs-restart",
        ),
        (
            "guards loosened",
            config(&[1, 1, 1, 1], "[guards]\nmax_backend_share = 0.9", true),
            "guard-loosened",
        ),
    ];
    for (what, text, code) in cases {
        let mut rig = Rig::new(&base);
        let before = rig.snapshot();
        let decision = rig.change(&text, api());
        assert!(
            codes(&decision).iter().any(|c| c == code),
            "{what}: {decision:?}"
        );
        assert_eq!(rig.snapshot(), before, "{what}: the state in force stays");
        assert_eq!(
            rig.journal(),
            [(api().name(), "refused".to_string())],
            "{what}"
        );
    }
}

#[test]
fn force_lets_a_guard_through_and_names_it() {
    let mut rig = Rig::new(&config(&[1, 1, 1, 1], "", true));
    let next = config(&[1, 1, 1, 1, 1, 1, 1], "", true);
    let decision = rig.request(&next, api(), true, None, LeftOut::default());
    let Decision::Applied { plan, .. } = decision else {
        panic!("{decision:?}");
    };
    assert!(
        plan.forced.iter().any(|p| p.code == "blast-radius-flows"),
        "{:?}",
        plan.forced
    );
}

#[test]
fn a_failure_at_any_step_leaves_the_previous_state_in_force_and_the_file_as_it_was() {
    let base = config(&[1, 1, 1], "", true);
    let next = config(&[1, 1, 2], "", true);
    for step in [
        Step::Resolve,
        Step::Stage,
        Step::Verify,
        Step::Record,
        Step::Persist,
        Step::Commit,
    ] {
        let mut rig = Rig::new(&base);
        let before = rig.snapshot();
        let idle = 1 - rig.desk.dataplane.bank;
        // A directory where the file's temporary copy would go makes the
        // durable write fail.
        let blocker = match step {
            Step::Resolve => {
                rig.lan.unreachable = true;
                None
            }
            Step::Record => Some(rig.dir.join(format!(
                "state/fl0/.bank-{idle}.json.tmp-{}",
                std::process::id()
            ))),
            Step::Persist => Some(
                rig.dir
                    .join(format!(".fulcrum.toml.tmp-{}", std::process::id())),
            ),
            Step::Stage | Step::Verify | Step::Commit => {
                rig.desk.dataplane.fail = Some(step);
                None
            }
            Step::Build => unreachable!(),
        };
        if let Some(blocker) = &blocker {
            std::fs::create_dir_all(blocker).expect("the blocker");
        }
        // Resolving is asked only for backends without a MAC.
        let text = if step == Step::Resolve {
            config(&[1, 1, 2], "", false)
        } else {
            next.clone()
        };
        let decision = rig.change(&text, api());
        let Decision::Failed { failure, .. } = &decision else {
            panic!("{step:?}: {decision:?}");
        };
        assert_eq!(failure.step, step, "{failure}");
        assert_eq!(rig.snapshot(), before, "{step:?}: the state in force stays");
        assert_eq!(rig.journal(), [(api().name(), "failed".to_string())]);
        if let Some(blocker) = &blocker {
            std::fs::remove_dir_all(blocker).expect("the blocker goes");
        }
        rig.lan.unreachable = false;
        let decision = rig.change(&next, api());
        assert!(
            matches!(decision, Decision::Applied { generation: 2, .. }),
            "{step:?}: the next change applies: {decision:?}"
        );
    }
}

#[test]
fn a_backend_without_a_mac_is_held_out_and_joins_once_it_resolves() {
    let mut rig = Rig::new(&config(&[1, 1, 1], "", true));
    let mut next = config(&[1, 1, 1], "", true);
    next += "[[vip.backend]]\naddress = \"198.18.0.9\"\nweight = 1\n";
    let decision = rig.change(&next, api());
    let Decision::Applied { plan, .. } = decision else {
        panic!("{decision:?}");
    };
    assert!(plan.problems.iter().any(|p| p.code == "no-mac"));
    assert_eq!(rig.desk.in_force().held_out, [backend(9).ip()]);
    assert_eq!(rig.slots()[&backend(9)], 0, "held out at weight 0");
    rig.lan
        .macs
        .insert(backend(9).ip(), MacAddr([2, 0, 0, 0, 0, 9]));
    let decision = rig.request(&next, Door::Neighbours, true, None, LeftOut::default());
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    assert!(rig.desk.in_force().held_out.is_empty());
    assert!(rig.slots()[&backend(9)] > 50, "{:?}", rig.slots());
}

#[test]
fn health_and_operator_changes_interleave_without_losing_either() {
    let mut rig = Rig::new(&config(&[1, 1, 1, 1], "", true));
    let down: Vec<Down> = vec![(VIP.to_string(), backend(4))];
    let text = rig.desk.in_force().text.clone();
    // Health takes backend 4 out; the operator's text stays in force.
    let decision = rig.request(&text, health(&[VIP]), false, None, down_only(&down));
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    assert_eq!(rig.slots()[&backend(4)], 0);
    assert_eq!(rig.desk.in_force().text, text);
    // The operator reweights while it is down: the new weights, still
    // without backend 4.
    let reweighted = config(&[2, 2, 1, 1], "", true);
    let decision = rig.request(&reweighted, api(), false, None, down_only(&down));
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    let slots = rig.slots();
    assert_eq!(slots[&backend(4)], 0, "still down: {slots:?}");
    assert!(slots[&backend(1)] > slots[&backend(3)], "{slots:?}");
    assert_eq!(rig.file(), reweighted);
    // A refused operator change keeps both the weights and the health.
    let decision = rig.request(
        &config(&[9, 1, 1, 1], "", true),
        api(),
        false,
        None,
        down_only(&down),
    );
    assert!(codes(&decision).iter().any(|c| c == "concentration"));
    assert_eq!(rig.slots(), slots);
    // Health brings it back, at the operator's weight.
    let decision = rig.request(&reweighted, health(&[VIP]), false, None, LeftOut::default());
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    let slots = rig.slots();
    assert!(slots[&backend(4)] > 0, "{slots:?}");
    assert_eq!(
        slots[&backend(4)].abs_diff(slots[&backend(3)]),
        0,
        "{slots:?}"
    );
    let results: Vec<String> = rig.journal().into_iter().map(|(_, r)| r).collect();
    assert_eq!(results, ["applied", "applied", "refused", "applied"]);
}

#[test]
fn ejected_and_ramping_backends_are_installed_and_recorded_apart_from_dead_ones() {
    let mut rig = Rig::new(&config(&[1, 1, 1, 1], "", true));
    let text = rig.desk.in_force().text.clone();
    let ejected: Vec<Down> = vec![(VIP.to_string(), backend(2))];
    let down: Vec<Down> = vec![(VIP.to_string(), backend(4))];
    let outlier = Door::Outlier(TableChange {
        details: vec!["web: eject 198.18.0.2:80".into()],
        vips: vec![VIP.into()],
    });
    let ramped: Vec<Ramped> = vec![((VIP.to_string(), backend(3)), 0.5)];
    let left_out = LeftOut {
        down: &down,
        ejected: &ejected,
        ramped: &ramped,
    };
    let decision = rig.request(&text, outlier, false, None, left_out);
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    let slots = rig.slots();
    assert_eq!(
        (slots[&backend(2)], slots[&backend(4)]),
        (0, 0),
        "{slots:?}"
    );
    let state = rig.desk.dataplane.installed().expect("installed");
    let down_in_state: Vec<(SocketAddr, bool)> = state.vips[0]
        .backends
        .iter()
        .map(|b| (b.addr, b.down))
        .collect();
    assert_eq!(
        down_in_state,
        [
            (backend(1), false),
            (backend(2), false),
            (backend(3), false),
            (backend(4), true)
        ],
        "only the dead backend's slot goes inactive: the ejected one keeps its flows"
    );
    let record = rig.live_record();
    assert_eq!(
        (
            record.down.clone(),
            record.ejected.clone(),
            record.ramped.clone()
        ),
        (down.clone(), ejected.clone(), ramped.clone())
    );
    let (_, rebuilt) = record.state().expect("the record rebuilds");
    assert_eq!(
        Some(&rebuilt.vips[0].table),
        rig.desk.dataplane.installed().map(|s| &s.vips[0].table),
        "a restart rebuilds the same table"
    );
    assert_eq!(rig.desk.in_force().text, text, "the operator's text stays");
    assert_eq!(
        rig.journal(),
        [("outlier".to_string(), "applied".to_string())]
    );
}

fn rollback() -> Door {
    Door::Rollback(TableChange {
        details: vec!["rolls back generation 2 (api apply)".into()],
        vips: vec![VIP.into()],
    })
}

#[test]
fn a_rollback_is_judged_by_the_guards_and_written_back_like_an_api_change() {
    let before = config(&[1, 1, 1, 1], "", true);
    // A small change, rolled back: applied, and the file is the old text.
    let mut rig = Rig::new(&before);
    let added = config(&[1, 1, 1, 1, 1], "", true);
    let decision = rig.change(&added, api());
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    let decision = rig.change(&before, rollback());
    assert!(
        matches!(decision, Decision::Applied { generation: 3, .. }),
        "{decision:?}"
    );
    assert_eq!(rig.file(), before, "written back");
    assert_eq!(rig.desk.in_force().text, before);
    // A forced change the guards would refuse to undo at once: its
    // rollback is refused too, and nothing changes.
    let mut rig = Rig::new(&before);
    let heavy = config(&[1, 1, 1, 1, 4], "", true);
    let mut request = Request {
        text: heavy.clone(),
        force: true,
        if_generation: None,
        door: api(),
        clients: None,
    };
    let decision = rig
        .desk
        .change(request.clone(), LeftOut::default(), &rig.lan);
    assert!(matches!(decision, Decision::Applied { .. }), "{decision:?}");
    let state = rig.snapshot();
    request.text = before.clone();
    request.force = false;
    request.door = rollback();
    let decision = rig.desk.change(request, LeftOut::default(), &rig.lan);
    let refused = codes(&decision);
    assert!(
        refused.iter().any(|c| c.starts_with("blast-radius")),
        "{refused:?}"
    );
    assert_eq!(rig.snapshot(), state, "nothing changed");
    let results: Vec<(String, String)> = rig.journal();
    assert_eq!(
        results,
        [
            ("api apply".to_string(), "applied".to_string()),
            ("rollback".to_string(), "refused".to_string())
        ]
    );
}
