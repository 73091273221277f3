//! The daemon's life behind `fulcrum run`, on one tokio runtime: start-up
//! (`start`), then one loop over everything that can happen (API requests,
//! signals, the neighbour tick, health transitions, edits of the config
//! file), each handed to the controller in turn, so that no two changes
//! ever interleave; then the exit, which leaves the data plane forwarding
//! unless told to detach it.

use std::{
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    daemon::{
        Controller, Door,
        api::{self, Job, Jobs, Request},
        notify, scrape,
        start::{Options, Started, read_config, start},
    },
    health::Transition,
};

/// What the controller reacts to.
pub enum Event {
    /// An API request.
    Api(Job),
    /// SIGUSR1: print the counters.
    Report,
    /// SIGHUP: read the config file again.
    Reread,
    /// SIGINT or SIGTERM: exit.
    Exit,
    /// The config file changed on disk.
    FileChanged,
    /// Time to look at the neighbour table again (and at health changes
    /// damping held back, the outlier detector's findings, and the
    /// slow-start ramps).
    Neighbours,
    /// A backend's health checks changed its state.
    Health(Transition),
}

/// Where events go.
pub type Events = mpsc::UnboundedSender<Event>;

/// How often backend MACs are looked up again (changes are followed, and
/// held-out backends join once they resolve).
const NEIGHBOUR_POLL: Duration = Duration::from_secs(2);

/// How often the config file is checked for edits.
const FILE_POLL: Duration = Duration::from_secs(1);

/// What the config file held when last read by anyone (the watch, a
/// SIGHUP, the daemon's own write-back of an API change), or why it was
/// not a config: the watch says only what differs from it, so that an edit
/// is judged once, and an edit back to an older text is never missed.
type FileSeen = Arc<Mutex<Result<String, String>>>;

/// Notes that the file now reads `read` (the bounded read).
fn saw(seen: &FileSeen, read: Result<String, crate::config::ReadError>) {
    *seen.lock().unwrap_or_else(PoisonError::into_inner) = read.map_err(|e| e.to_string());
}

/// Says whenever the config file differs from what was last seen of it:
/// its text, or that it is not a config (too large, not text), which the
/// daemon then reports once. Reads at most the config size limit, however
/// large the file grows.
async fn watch_file(path: PathBuf, seen: FileSeen, events: Events) {
    let mut tick = tokio::time::interval(FILE_POLL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let read = match crate::config::read_file(&path) {
            // Missing or unreadable for a moment (an editor replacing it):
            // wait for the next look.
            Err(crate::config::ReadError::Io(_)) => continue,
            read => read.map_err(|e| e.to_string()),
        };
        let mut last = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if *last != read {
            *last = read;
            drop(last);
            if events.send(Event::FileChanged).is_err() {
                return;
            }
        }
    }
}

/// Turns SIGINT and SIGTERM into `Exit`, SIGUSR1 into `Report` and SIGHUP
/// into `Reread`, on the runtime, for as long as the daemon lives.
async fn relay_signals(events: &Events) -> anyhow::Result<()> {
    let kinds: [(SignalKind, fn() -> Event); 4] = [
        (SignalKind::interrupt(), || Event::Exit),
        (SignalKind::terminate(), || Event::Exit),
        (SignalKind::user_defined1(), || Event::Report),
        (SignalKind::hangup(), || Event::Reread),
    ];
    for (kind, event) in kinds {
        let mut signals = signal(kind).context("installing signal handlers")?;
        let events = events.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                if events.send(event()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Sends `Neighbours` now and every `NEIGHBOUR_POLL`.
async fn tick(events: Events) {
    let mut tick = tokio::time::interval(NEIGHBOUR_POLL);
    loop {
        tick.tick().await;
        if events.send(Event::Neighbours).is_err() {
            return;
        }
    }
}

/// Prints a counter report; a closed stdout is reported once on stderr and
/// never stops the controller.
fn report(controller: &Controller, json: bool) {
    let text = match controller.report() {
        Ok(report) if json => serde_json::to_string(&report)
            .map_or_else(|e| format!("{{\"error\": \"{e}\"}}\n"), |json| json + "\n"),
        Ok(report) => report.to_text(),
        Err(e) => {
            crate::note!("reading the counters failed: {e:#}");
            return;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        crate::note!("counters not printed: {e}");
    }
}

/// Runs the controller until a signal (or `fulcrum detach`) stops it. The
/// controller works on this thread, one event at a time; what it waits
/// for (signals, the neighbour tick, edits of the file) is watched on the
/// runtime.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fulcrum-runtime")
        .enable_all()
        .build()
        .context("starting the daemon's tokio runtime")?;
    let (events, mut inbox) = mpsc::unbounded_channel();
    // First: a signal during start-up waits in the inbox.
    runtime.block_on(relay_signals(&events))?;
    let Started {
        mut controller,
        interface,
        config,
        text,
        lock: _lock,
    } = {
        let events = events.clone();
        let notify = move |transition| {
            let _ = events.send(Event::Health(transition));
        };
        start(&options, (notify, runtime.handle()))?
    };
    controller.monitor().spawn_sampler(runtime.handle());
    let socket = options.socket.clone().unwrap_or(config.api.socket.clone());
    let metrics_address = options.metrics.unwrap_or(config.api.metrics);
    let metrics = scrape::serve(metrics_address, controller.monitor(), runtime.handle())?;
    let jobs: Jobs = {
        let events = events.clone();
        Arc::new(move |job| events.send(Event::Api(job)).is_ok())
    };
    let server = api::serve(&socket, jobs, controller.trace_hub(), runtime.handle())?;
    let seen: FileSeen = Arc::new(Mutex::new(Ok(text)));
    runtime.spawn(watch_file(
        options.config.clone(),
        seen.clone(),
        events.clone(),
    ));
    runtime.spawn(tick(events));
    let capacities = controller.dataplane().capacities()?;
    crate::note!(
        "serving on {interface}; API on {}; metrics on http://{metrics_address}/metrics; \
         room for {} flows and {} backends; edits of {} (or SIGHUP) are applied through \
         the gate, SIGUSR1 prints counters, SIGINT/SIGTERM exit",
        socket.display(),
        capacities.connection_table_size,
        capacities.max_backends,
        options.config.display()
    );
    notify::tell(&format!(
        "READY=1\nSTATUS=serving on {interface}, generation {}",
        controller.dataplane().generation()
    ));
    let next = loop {
        let Some(event) = inbox.blocking_recv() else {
            break Next::Exit;
        };
        match handle(&mut controller, event, &options, &seen) {
            Next::Serve => {}
            next => break next,
        }
    };
    notify::tell("STOPPING=1");
    if let Next::Detached = next {
        // Let the answer reach the caller before the socket goes.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    drop(metrics);
    runtime.shutdown_background();
    match next {
        Next::Exit => exit(&mut controller, &options, &interface),
        Next::Serve | Next::Detached => Ok(()),
    }
}

/// Where the loop is: serving, or done.
enum Next {
    Serve,
    /// Detached on request: exit at once.
    Detached,
    /// SIGINT or SIGTERM.
    Exit,
}

/// Hands one event to the controller.
fn handle(controller: &mut Controller, event: Event, options: &Options, seen: &FileSeen) -> Next {
    match event {
        Event::Api(job) => {
            let detaching = matches!(job.request, Request::Detach);
            let writes = matches!(job.request, Request::Apply(_) | Request::Backend(_));
            let reply = controller.handle(job.request, job.uid);
            if writes && reply.status == 200 {
                // The daemon wrote the change back into the file.
                saw(seen, crate::config::read_file(&options.config));
            }
            let detached = detaching && reply.status == 200;
            let _ = job.reply.send(reply);
            if detached {
                return Next::Detached;
            }
        }
        Event::Report => report(controller, options.json_stats),
        Event::Reread => match read_config(&options.config) {
            Ok(text) => {
                saw(seen, Ok(text.clone()));
                if text == controller.config_text() {
                    controller.file_seen(&text);
                    crate::note!(
                        "sighup: {} is the config in force; nothing to change",
                        options.config.display()
                    );
                } else {
                    controller.change(text, false, None, Door::Sighup);
                    controller.begin_watch(None);
                }
            }
            Err(e) => crate::note!("SIGHUP: {e:#}; the installed state stays in force"),
        },
        Event::FileChanged => {
            // Read the file now, not when the watcher saw it: the API may
            // have written it since, and an older text must not undo that.
            match read_config(&options.config) {
                Ok(text) if text != controller.config_text() => {
                    controller.change(text, false, None, Door::FileChanged);
                    controller.begin_watch(None);
                }
                Ok(text) => controller.file_seen(&text),
                Err(e) => crate::note!("{e:#}; the installed state stays in force"),
            }
        }
        Event::Neighbours => {
            controller.follow_interface_mac();
            controller.refresh_neighbours();
            controller.reconcile_health();
            controller.reconcile_outliers();
            controller.advance_ramps();
            controller.check_watch();
            controller.announce();
        }
        Event::Health(transition) => {
            crate::note!(
                "health: VIP {} backend {} is {}: {}",
                transition.key.vip,
                transition.key.backend,
                if transition.up { "up" } else { "DOWN" },
                transition.reason
            );
            controller.reconcile_health();
            controller.reconcile_outliers();
        }
        Event::Exit => return Next::Exit,
    }
    Next::Serve
}

/// The last report, then either the routes withdrawn and the data plane
/// detached (`--detach-on-exit`), or the data plane left forwarding.
fn exit(controller: &mut Controller, options: &Options, interface: &str) -> anyhow::Result<()> {
    report(controller, options.json_stats);
    let (pins, records) = options.places(interface);
    if options.detach_on_exit
        && let Err(e) = controller.withdraw()
    {
        crate::note!(
            "WARNING withdrawing the routes failed: {e:#}; not detaching: the data plane \
             stays attached and forwarding what the routers still send"
        );
    } else if options.detach_on_exit {
        controller.dataplane_mut().detach()?;
        pins.remove()?;
        records.remove()?;
        crate::note!("detached from {interface} and removed its pins");
    } else {
        crate::note!(
            "exiting; the data plane stays attached to {interface} and keeps \
             forwarding (pinned at {}); `fulcrum detach --interface {interface} \
             --pin-root {} --state-root {}` removes it",
            pins.path().display(),
            options.pin_root.display(),
            options.state_root.display()
        );
    }
    Ok(())
}
