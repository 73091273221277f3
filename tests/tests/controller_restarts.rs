//! The data plane outlives its controller. `kill -9` of `fulcrum run`, five
//! times, while long-lived TCP connections stay open and new connections
//! and UDP flows keep coming: no connection fails, no open connection
//! changes backend, and the counters keep rising instead of resetting,
//! because every restart adopts the pinned data plane.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use lb_tests::{
    lab::{BackendSpec, Lab, TCP_PORT, UDP_PORT, VIP4},
    traffic::{self, Session, Tally},
};
use lb_userspace::report::Report;

const KILLS: usize = 5;
const SESSIONS: usize = 12;

fn new_flows(reports: &[Report]) -> u64 {
    let last = reports.last().expect("a counter report");
    last.vips.iter().map(|v| v.new_flows).sum()
}

#[test]
fn kill_9_of_the_controller_loses_nothing() {
    let backends: Vec<BackendSpec> = ["b1", "b2", "b3"]
        .into_iter()
        .map(|name| BackendSpec {
            name: name.into(),
            weight: 1,
        })
        .collect();
    let lab = Lab::start(&backends).expect("lab starts");
    let web4 = SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT);
    let dns4 = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let mut sessions: Vec<Session> = (0..SESSIONS)
        .map(|_| Session::open(lab.client(), web4))
        .collect::<anyhow::Result<_>>()
        .expect("long-lived connections open");
    let stop = AtomicBool::new(false);
    let mut flows_seen = Vec::new();
    let (tally, rounds) = std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut tally = Tally::default();
            let mut rounds = 0u16;
            while !stop.load(Ordering::Relaxed) {
                tally.merge(traffic::tcp_connections(lab.client(), web4, 40, 2)?);
                tally.merge(traffic::udp_flows(
                    lab.client(),
                    dns4,
                    20,
                    20000 + rounds * 20,
                )?);
                rounds += 1;
            }
            anyhow::Ok((tally, rounds))
        });
        for kill in 0..KILLS {
            std::thread::sleep(Duration::from_millis(300));
            lab.request_counters().expect("SIGUSR1");
            std::thread::sleep(Duration::from_millis(200));
            let reports = lab.kill_fulcrum().expect("kill -9");
            flows_seen.push(new_flows(&reports));
            assert!(lab.lb_has_xdp().unwrap(), "kill {kill}: still attached");
            for session in &mut sessions {
                let answer = session.ask().expect("an open connection answers");
                assert_eq!(
                    answer, session.backend,
                    "kill {kill}: no controller running"
                );
            }
            let log = lab.start_fulcrum().expect("fulcrum restarts");
            assert!(
                log.iter().any(|l| l.contains("adopted the data plane")),
                "kill {kill}: the restart adopts: {log:?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        background
            .join()
            .expect("traffic thread")
            .expect("traffic runs")
    });
    assert!(
        rounds as usize >= KILLS,
        "traffic ran throughout: {rounds} rounds"
    );
    assert_eq!(
        tally.failures,
        0,
        "{} of {} attempts failed (first: {:?})",
        tally.failures,
        tally.answered() + tally.failures,
        tally.first_error
    );
    for session in &mut sessions {
        assert_eq!(session.ask().expect("still open"), session.backend);
    }
    lab.request_counters().expect("SIGUSR1");
    std::thread::sleep(Duration::from_millis(200));
    flows_seen.push(new_flows(&lab.stop_fulcrum().expect("fulcrum stops")));
    assert!(
        flows_seen.windows(2).all(|w| w[0] < w[1]),
        "new-flow counters keep rising across restarts: {flows_seen:?}"
    );
    eprintln!(
        "{KILLS} kills: {} connections and flows answered, 0 failed; {SESSIONS} \
         long-lived connections kept their backend; new flows counted: {flows_seen:?}",
        tally.answered()
    );
    lab.detach().expect("fulcrum detach");
    assert!(!lab.lb_has_xdp().unwrap());
}
