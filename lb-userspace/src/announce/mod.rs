//! Announcing VIPs to the routers: which installed VIPs this host is
//! ready to serve, and BIRD's routes for them kept in step (written on
//! every change and checked on every tick, withdrawn on detach).
//!
//! A VIP is ready while the data plane is attached to its interface and
//! the VIP's table is installed and verified (what `Dataplane::installed`
//! holds was read back from the kernel before it counted). A VIP the gate
//! refused is never installed, so never announced. A refused *change* of
//! an installed VIP withdraws nothing: the gate keeps the previous state
//! in force, and that state still serves; withdrawing would turn a bad
//! config pushed to every host of a group into an outage on all of them.
//!
//! Routes are per address: an address is announced while a VIP on it is
//! ready.
//!
//! A VIP whose backends are not all judged by this daemon's health checks
//! yet (just after a start) is settling: it is not announced anew until
//! it settles, so a host does not draw traffic before it knows where to
//! send it; but a route a previous daemon announced stays, so a restart
//! never flaps a route.
//!
//! Failing health alone withdraws nothing: a VIP every one of whose
//! backends fails stays announced (its table keeps them all, in panic),
//! since the same view on every host of a group would otherwise withdraw
//! the service everywhere. Only when BIRD also reaches no router (no BGP
//! session established) is this host cut off: withdrawing then costs no
//! traffic, and the route comes back only once the VIP's checks have
//! settled again, so a host rejoining after a silent outage draws no
//! flows before it knows where to send them.

pub mod bird;

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::errors::Chain;
use crate::{config::Announce, dataplane::state::DesiredState};

/// One installed VIP's readiness to be announced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// Its label.
    pub name: String,
    /// `address:port/protocol`.
    pub endpoint: String,
    /// The address its route is for.
    pub address: IpAddr,
    /// Whether it may be announced.
    pub ready: bool,
    /// Waiting for its health checks: an announced route stays, none is
    /// added.
    #[serde(default)]
    pub settling: bool,
    /// Why not, or `ready`.
    pub why: String,
}

/// Why health holds a VIP's announcement back.
#[derive(Clone, Debug, PartialEq)]
pub enum Hold {
    /// Its checks have not judged every backend yet: a route announced
    /// already stays, none is added.
    Settling(String),
    /// Every check fails and BIRD reaches no router: the route goes.
    CutOff(String),
}

/// The readiness of every VIP of `state` (what is installed and verified)
/// on a data plane that is, or is not, `attached`; `holds` says which
/// VIPs health holds back, and why, by endpoint.
pub fn readiness(
    attached: bool,
    state: Option<&DesiredState>,
    holds: &BTreeMap<String, Hold>,
) -> Vec<Readiness> {
    let Some(state) = state else {
        return Vec::new();
    };
    state
        .vips
        .iter()
        .map(|vip| {
            let endpoint = vip.endpoint();
            let hold = holds.get(&endpoint).filter(|_| attached);
            Readiness {
                name: vip.label.clone(),
                address: crate::dataplane::state::ip_from(&vip.key.addr, vip.key.family),
                ready: attached && hold.is_none(),
                settling: matches!(hold, Some(Hold::Settling(_))),
                why: match hold {
                    Some(Hold::Settling(why) | Hold::CutOff(why)) => why.clone(),
                    None if attached => "ready".into(),
                    None => "the data plane is not attached".into(),
                },
                endpoint,
            }
        })
        .collect()
}

/// The addresses to announce: those with a ready VIP, and those of a
/// settling VIP that are announced already (`announced`).
pub fn routes(vips: &[Readiness], announced: &[IpAddr]) -> Vec<IpAddr> {
    let mut routes: Vec<IpAddr> = vips
        .iter()
        .filter(|v| v.ready || (v.settling && announced.contains(&v.address)))
        .map(|v| v.address)
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

/// What the announcer did, for `status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceReport {
    /// The include file.
    pub bird_include: String,
    /// BIRD's control socket.
    pub bird_socket: String,
    /// The routes BIRD was last told, and took.
    pub routes: Vec<IpAddr>,
    /// Every installed VIP's readiness.
    pub vips: Vec<Readiness>,
    /// Why the last attempt to tell BIRD failed, while it has not
    /// succeeded since.
    pub error: Option<String>,
    /// Failed attempts since start.
    pub failures: u64,
}

impl AnnounceReport {
    /// Whether the routes of `endpoint`'s address are announced.
    pub fn announced(&self, endpoint: &str) -> bool {
        self.vips
            .iter()
            .any(|v| v.endpoint == endpoint && self.routes.contains(&v.address))
    }
}

/// Keeps BIRD's routes in step with what this host is ready to serve.
pub struct Announcer {
    settings: Announce,
    interface: String,
    /// The routes BIRD took last; `None` until it took any.
    told: Option<Vec<IpAddr>>,
    /// The routes the include file held when this announcer began: what a
    /// previous daemon left announced.
    found: Vec<IpAddr>,
    /// Whether BIRD reached no router when last asked.
    cut_off: bool,
    report: AnnounceReport,
}

impl Announcer {
    /// An announcer through BIRD as `settings` say, for routes via
    /// `interface`; it has told BIRD nothing yet.
    pub fn new(settings: &Announce, interface: &str) -> Self {
        Self {
            settings: settings.clone(),
            interface: interface.to_string(),
            told: None,
            found: bird::rendered_routes(&settings.bird_include),
            cut_off: false,
            report: AnnounceReport {
                bird_include: settings.bird_include.display().to_string(),
                bird_socket: settings.bird_socket.display().to_string(),
                ..AnnounceReport::default()
            },
        }
    }

    /// The settings it announces by.
    pub fn settings(&self) -> &Announce {
        &self.settings
    }

    /// Whether it can take `settings` as they are: the same include file
    /// and BIRD, so nothing needs withdrawing; it takes them if so.
    pub fn take_settings(&mut self, settings: &Announce) -> bool {
        let same_bird = self.settings.bird_include == settings.bird_include
            && self.settings.bird_socket == settings.bird_socket;
        if same_bird {
            self.settings = settings.clone();
        }
        same_bird
    }

    /// Announces the ready VIPs of `vips` and withdraws the rest, telling
    /// BIRD only when that changes what it was told (or it failed to
    /// take the last change, which is retried). Returns a line to log
    /// when something changed or failed (a failure once, not every retry).
    pub fn reconcile(&mut self, vips: Vec<Readiness>) -> Option<String> {
        let routes = routes(&vips, self.told.as_deref().unwrap_or(&self.found));
        self.report.vips = vips;
        if self.told.as_ref() == Some(&routes) {
            return None;
        }
        let spelt = spell(&routes);
        match self.tell(routes) {
            Ok(()) => Some(format!("announce: BIRD now announces {spelt}")),
            Err(e) => {
                let message = Chain(&e).to_string();
                let again = self.report.error.as_ref() == Some(&message);
                self.report.error = Some(message.clone());
                (!again).then(|| {
                    format!(
                        "announce: WARNING telling BIRD to announce {spelt} failed: {message}; \
                         retrying every tick"
                    )
                })
            }
        }
    }

    /// Whether BIRD has BGP peers and an established session with none
    /// of them; says so in the log when that changes. A BIRD that cannot
    /// be asked counts as connected: nothing is withdrawn on a guess.
    pub fn cut_off(&mut self) -> bool {
        let cut_off = bird::sessions(&self.settings.bird_socket).is_ok_and(|s| s.cut_off());
        if cut_off != self.cut_off {
            crate::note!(
                "announce: {}",
                if cut_off {
                    "BIRD has no established BGP session: this host is cut off from the routers"
                } else {
                    "BIRD has an established BGP session again"
                }
            );
            self.cut_off = cut_off;
        }
        cut_off
    }

    /// Withdraws every route (the data plane is going away). A BIRD that
    /// is not running counts as withdrawn: the include file is empty when
    /// it starts. Any other failure is an error: the routes may still be
    /// announced.
    pub fn withdraw(&mut self) -> Result<String, bird::BirdError> {
        for vip in &mut self.report.vips {
            vip.ready = false;
            vip.why = "withdrawn: detaching".into();
        }
        match self.tell(Vec::new()) {
            Ok(()) => Ok("announce: BIRD withdrew every route".into()),
            Err(e) if e.not_running() => {
                self.report.error = None;
                Ok(format!(
                    "announce: no BIRD runs on {} ({e}); the include file is empty, so it \
                     announces nothing when it starts",
                    self.settings.bird_socket.display()
                ))
            }
            Err(e) => {
                self.report.error = Some(Chain(&e).to_string());
                Err(e)
            }
        }
    }

    /// How long to let the withdrawal reach the routers before detaching.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.settings.drain_s)
    }

    /// What it did.
    pub fn report(&self) -> &AnnounceReport {
        &self.report
    }

    /// Tells BIRD to announce `routes`, and records what BIRD took.
    fn tell(&mut self, routes: Vec<IpAddr>) -> Result<(), bird::BirdError> {
        let result = bird::announce(
            &self.settings.bird_include,
            &self.settings.bird_socket,
            &routes,
            &self.interface,
        );
        match &result {
            Ok(()) => {
                self.told = Some(routes.clone());
                self.report.routes = routes;
                self.report.error = None;
            }
            Err(_) => self.report.failures += 1,
        }
        result
    }
}

fn spell(routes: &[IpAddr]) -> String {
    if routes.is_empty() {
        return "no routes".into();
    }
    let spelt: Vec<String> = routes.iter().map(ToString::to_string).collect();
    spelt.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DesiredState {
        crate::dataplane::state::sample_state()
    }

    #[test]
    fn installed_vips_are_ready_while_attached_one_route_per_address() {
        let all = state();
        let settled = BTreeMap::new();
        let ready = readiness(true, Some(&all), &settled);
        assert!(ready.iter().all(|v| v.ready), "{ready:?}");
        assert_eq!(
            routes(&ready, &[]),
            vec![
                "198.18.100.1".parse::<IpAddr>().unwrap(),
                "2001:2::100".parse().unwrap()
            ]
        );
        // Detached: nothing.
        let detached = readiness(false, Some(&all), &settled);
        assert!(
            detached
                .iter()
                .all(|v| !v.ready && v.why.contains("not attached"))
        );
        assert!(routes(&detached, &[]).is_empty());
        assert!(readiness(true, None, &settled).is_empty());
    }

    #[test]
    fn a_settling_vip_keeps_its_announced_route_and_gets_no_new_one() {
        let all = state();
        let settling: BTreeMap<String, Hold> = all
            .vips
            .iter()
            .map(|v| {
                let why = "waiting for its health checks".to_string();
                (v.endpoint(), Hold::Settling(why))
            })
            .collect();
        let waiting = readiness(true, Some(&all), &settling);
        assert!(
            waiting
                .iter()
                .all(|v| !v.ready && v.settling && v.why.contains("health checks")),
            "{waiting:?}"
        );
        assert!(routes(&waiting, &[]).is_empty(), "no new route");
        let announced: Vec<IpAddr> = vec!["198.18.100.1".parse().unwrap()];
        assert_eq!(
            routes(&waiting, &announced),
            announced,
            "kept, not added to"
        );
    }

    #[test]
    fn a_cut_off_vip_is_withdrawn_and_the_rest_stay() {
        let all = state();
        // The only VIP on its address.
        let lone = all.vips[2].endpoint();
        let why = "every check fails and BIRD reaches no router".to_string();
        let holds = BTreeMap::from([(lone.clone(), Hold::CutOff(why))]);
        let vips = readiness(true, Some(&all), &holds);
        let held: Vec<&Readiness> = vips.iter().filter(|v| !v.ready).collect();
        assert_eq!(held.len(), 1, "{vips:?}");
        assert_eq!(held[0].endpoint, lone);
        assert!(!held[0].settling && held[0].why.contains("reaches no router"));
        let announced: Vec<IpAddr> = vips.iter().map(|v| v.address).collect();
        assert_eq!(
            routes(&vips, &announced),
            vec!["198.18.100.1".parse::<IpAddr>().unwrap()],
            "withdrawn"
        );
    }
}
