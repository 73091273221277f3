//! `fulcrum top`: a live view of the daemon's report, polled through the
//! admin API. It owns the rates (packets, bytes and new flows per second,
//! from the cumulative counters of two answers), the drawing (per VIP its
//! rates and totals, per backend its observed share of new flows as a bar
//! against the share its table promises, imbalance flags in red, the
//! verdict counters that moved) and the terminal: raw mode on the
//! alternate screen, always given back, after an error too.

use std::{
    collections::HashMap,
    io::{self, IsTerminal as _},
    ops::ControlFlow,
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::maps::Reason;
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::{
        event::{self, Event, KeyCode, KeyEvent, KeyModifiers},
        execute,
        terminal::{LeaveAlternateScreen, disable_raw_mode},
    },
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, Wrap},
};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use super::{
    OutputFormat,
    client::{Answer, Connection, NO_BODY},
};
use crate::daemon::wire::{self, StatusAnswer};
use crate::monitor::{
    describe_change,
    report::{BackendReport, Report, VipReport},
};

/// Arguments of `fulcrum top`.
#[derive(Args)]
pub struct TopArgs {
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
    /// How often to ask the daemon, in milliseconds (1 to 60000).
    #[arg(
        long,
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub interval_ms: u64,
}

/// The status in `answer`, or why there is none.
fn decode(answer: Answer) -> anyhow::Result<StatusAnswer> {
    if !answer.ok() {
        bail!("the daemon answered: {}", answer.reason());
    }
    answer
        .read()
        .context("the daemon's status is not a report top can read")
}

/// Asks the daemon for its status once.
fn poll(connection: &Connection) -> anyhow::Result<StatusAnswer> {
    decode(connection.request(wire::STATUS, NO_BODY)?)
}

/// With `--format json`: the daemon's status as one JSON line every
/// interval, until a signal or a reader that goes away. A refresh the
/// daemon does not answer is a line `{"error": ...}`, and the stream goes
/// on, as the screen does; only the first must be answered.
fn stream(args: &TopArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let every = Duration::from_millis(args.interval_ms);
    let mut next = Ok(poll(&args.connection).context("fulcrum top")?);
    let mut stdout = io::stdout();
    loop {
        let line = match &next {
            Ok(status) => serde_json::to_string(status)?,
            Err(e) => serde_json::to_string(&wire::ErrorAnswer {
                error: format!("{e:#}"),
            })?,
        };
        match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            written => written?,
        }
        thread::sleep(every);
        next = args.connection.call(wire::STATUS, NO_BODY).and_then(decode);
    }
}

/// Draws the daemon's report until a quit key (`q`, `Q`, Esc, Ctrl-C) or
/// SIGINT, SIGTERM or SIGHUP; with `--format json`, streams it instead.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    if let OutputFormat::Json = args.connection.format {
        return stream(&args);
    }
    // A daemon that cannot be reached is reported as `status` reports it,
    // before the screen is taken.
    let first = poll(&args.connection).context("fulcrum top")?;
    let answered = Instant::now();
    if !io::stdout().is_terminal() {
        bail!("fulcrum top needs a terminal; for a one-off report, use `fulcrum status`");
    }
    let every = Duration::from_millis(args.interval_ms);
    let mut top = Top::new(first, answered, every);
    let (wake, wakes) = mpsc::channel();
    // Handlers first: from here on a signal ends the loop, which gives the
    // terminal back, instead of killing the process on the alternate screen.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let on_signal = wake.clone();
    spawn("fulcrum-top-signals", move || {
        if signals.forever().next().is_some() {
            let _ = on_signal.send(Wake::Signal);
        }
    })?;
    let on_answer = wake.clone();
    let connection = args.connection;
    spawn("fulcrum-top-poll", move || {
        keep_polling(&connection, every, answered, &on_answer);
    })?;
    let mut screen = Screen::enter()?;
    spawn("fulcrum-top-keys", move || forward_input(&wake))?;
    loop {
        screen
            .terminal
            .draw(|frame| top.draw(frame))
            .context("drawing on the terminal")?;
        match wakes.recv() {
            Ok(Wake::Polled { at, wall, outcome }) => top.take(at, wall, outcome),
            Ok(Wake::Input(event)) => {
                // A resize needs nothing more: the next draw fits the new size.
                if let Some(key) = event.as_key_press_event()
                    && top.press(key).is_break()
                {
                    return Ok(());
                }
            }
            Ok(Wake::InputFailed(e)) => return Err(e).context("reading the terminal"),
            Ok(Wake::Signal) => return Ok(()),
            Err(mpsc::RecvError) => bail!("fulcrum top: the poller stopped"),
        }
    }
}

/// Asks the daemon every `every` (or as fast as a slow daemon answers),
/// the last time at `asked`, until the view is gone.
fn keep_polling(
    connection: &Connection,
    every: Duration,
    mut asked: Instant,
    wake: &mpsc::Sender<Wake>,
) {
    loop {
        thread::sleep(every.saturating_sub(asked.elapsed()));
        asked = Instant::now();
        let outcome = poll(connection).map(Box::new);
        let polled = Wake::Polled {
            at: Instant::now(),
            wall: SystemTime::now(),
            outcome,
        };
        if wake.send(polled).is_err() {
            return;
        }
    }
}

/// Passes the terminal's events on until the view is gone or the terminal
/// cannot be read.
fn forward_input(wake: &mpsc::Sender<Wake>) {
    loop {
        let (event, failed) = match event::read() {
            Ok(event) => (Wake::Input(event), false),
            Err(e) => (Wake::InputFailed(e), true),
        };
        if wake.send(event).is_err() || failed {
            return;
        }
    }
}

/// Runs `work` on a thread of its own.
fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map(drop)
        .with_context(|| format!("starting {name}"))
}

/// What wakes the view up.
enum Wake {
    /// The poller's answer (or failure), and when it came.
    Polled {
        at: Instant,
        wall: SystemTime,
        outcome: anyhow::Result<Box<StatusAnswer>>,
    },
    /// A key press, a resize, ...
    Input(Event),
    /// The terminal could not be read.
    InputFailed(io::Error),
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
}

/// The terminal in raw mode on the alternate screen; dropping it gives the
/// terminal back, whatever ended the view.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        // try_init also hooks panics to give the terminal back first.
        ratatui::try_init()
            .map(|terminal| Self { terminal })
            // It may have failed half-way, in raw mode.
            .inspect_err(|_| give_back())
            .context("taking over the terminal")
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        give_back();
    }
}

/// Raw mode off and the alternate screen left. Both are tried whatever
/// the other did, and failures are ignored: the terminal may be gone.
fn give_back() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen);
}

/// What a cumulative counter counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Counter {
    /// A VIP's, by its name.
    Vip(String, Field),
    /// A backend's, by its VIP's name and its own.
    Backend(String, String, Field),
    /// A verdict reason's packets, by the reason's name.
    Reason(String),
}

/// Which of a VIP's or backend's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Field {
    Packets,
    Bytes,
    NewFlows,
}

/// `packets`, `bytes` and `new_flows` by field.
fn fields(packets: u64, bytes: u64, new_flows: u64) -> [(Field, u64); 3] {
    [
        (Field::Packets, packets),
        (Field::Bytes, bytes),
        (Field::NewFlows, new_flows),
    ]
}

/// Every cumulative counter of `report`.
fn counters(report: &Report) -> HashMap<Counter, u64> {
    let mut counters = HashMap::new();
    for vip in &report.vips {
        for (field, count) in fields(vip.packets, vip.bytes, vip.new_flows) {
            counters.insert(Counter::Vip(vip.name.clone(), field), count);
        }
        for b in &vip.backends {
            for (field, count) in fields(b.packets, b.bytes, b.new_flows) {
                let counter = Counter::Backend(vip.name.clone(), b.name.clone(), field);
                counters.insert(counter, count);
            }
        }
    }
    for (name, &count) in &report.reasons {
        counters.insert(Counter::Reason(name.clone()), count);
    }
    counters
}

/// Per-second rates of the counters between the last two answers.
#[derive(Default)]
struct Rates {
    /// When the last answer came, and its counters.
    last: Option<(Instant, HashMap<Counter, u64>)>,
    /// Each counter's rate since the answer before. A counter has none
    /// after the first answer, when it is new, and when it went backwards
    /// (the daemon started on new maps): its rate starts again from there.
    per_second: HashMap<Counter, f64>,
}

impl Rates {
    fn update(&mut self, at: Instant, counters: HashMap<Counter, u64>) {
        self.per_second = match &self.last {
            Some((then, before)) if at > *then => {
                let seconds = at.duration_since(*then).as_secs_f64();
                counters
                    .iter()
                    .filter_map(|(counter, &now)| {
                        let moved = now.checked_sub(*before.get(counter)?)?;
                        Some((counter.clone(), moved as f64 / seconds))
                    })
                    .collect()
            }
            _ => HashMap::new(),
        };
        self.last = Some((at, counters));
    }

    fn of(&self, counter: &Counter) -> Option<f64> {
        self.per_second.get(counter).copied()
    }

    /// Packets, bytes and new flows per second for people (`-` while
    /// unknown), `counter` naming each field's counter.
    fn texts(&self, counter: impl Fn(Field) -> Counter) -> [String; 3] {
        let text = |field, unit| {
            self.of(&counter(field))
                .map_or_else(|| "-".into(), |rate| human(rate) + unit)
        };
        [
            text(Field::Packets, ""),
            text(Field::Bytes, "B"),
            text(Field::NewFlows, ""),
        ]
    }
}

/// The view: the latest answer, the rates since the one before, the last
/// failure, and how far it is scrolled.
struct Top {
    every: Duration,
    latest: StatusAnswer,
    answered: SystemTime,
    rates: Rates,
    /// Why the last poll failed; cleared by the next answer.
    failure: Option<String>,
    /// The first VIP shown.
    scroll: usize,
}

const RED_BOLD: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().add_modifier(Modifier::DIM);
/// The backend table's fixed columns after the name and the address:
/// header and width. Health is `up`, `DOWN` or `-` (not checked).
const NUMBER_COLUMNS: [(&str, u16); 5] = [
    ("weight", 6),
    ("health", 6),
    ("pkt/s", 6),
    ("bytes/s", 7),
    ("flows/s", 7),
];
/// The share column's text: `observed/expected%`.
const SHARE_TEXT_WIDTH: u16 = 8;

impl Top {
    fn new(first: StatusAnswer, at: Instant, every: Duration) -> Self {
        let mut top = Self {
            every,
            latest: first,
            answered: SystemTime::now(),
            rates: Rates::default(),
            failure: None,
            scroll: 0,
        };
        top.rates.update(at, counters(&top.latest.report));
        top
    }

    /// Takes a poll's outcome: an answer replaces the view, a failure is
    /// shown over the last answer.
    fn take(&mut self, at: Instant, wall: SystemTime, outcome: anyhow::Result<Box<StatusAnswer>>) {
        match outcome {
            Ok(status) => {
                self.rates.update(at, counters(&status.report));
                self.latest = *status;
                self.answered = wall;
                self.failure = None;
                self.scroll = self.scroll.min(self.last_vip());
            }
            Err(e) => self.failure = Some(format!("{e:#}")),
        }
    }

    fn last_vip(&self) -> usize {
        self.latest.report.vips.len().saturating_sub(1)
    }

    /// Acts on a key; breaks on a quit key.
    fn press(&mut self, key: KeyEvent) -> ControlFlow<()> {
        let control = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c' | 'C') if control => return ControlFlow::Break(()),
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => return ControlFlow::Break(()),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.scroll = (self.scroll + 1).min(self.last_vip());
            }
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn draw(&self, frame: &mut Frame) {
        let failure = self.failure.as_ref().map(|why| {
            format!(
                "no answer from the daemon: {why}; showing its answer of {}, retrying every {} ms",
                clock(self.answered),
                self.every.as_millis()
            )
        });
        let width = usize::from(frame.area().width.max(1));
        let failure_height = failure.as_ref().map_or(0, |text| {
            // Lines the wrapped text takes (a line more for breaks between
            // words), at most 4.
            (Span::raw(text).width() / width + 1).min(4) as u16
        });
        let [header, body, failed, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Length(failure_height),
            Constraint::Length(2),
        ])
        .areas(frame.area());
        frame.render_widget(self.header(), header);
        let shown = self.draw_vips(frame, body);
        if let Some(text) = failure {
            let failure = Paragraph::new(text)
                .style(RED_BOLD)
                .wrap(Wrap { trim: true });
            frame.render_widget(failure, failed);
        }
        frame.render_widget(self.footer(shown), footer);
    }

    /// `fulcrum top: eth0 attached, generation 3, window 10 s, 12:34:56 UTC`.
    fn header(&self) -> Line<'static> {
        let report = &self.latest.report;
        let attached = if report.attached {
            Span::styled("attached", Style::new().fg(Color::Green))
        } else {
            Span::styled("NOT ATTACHED", RED_BOLD)
        };
        Line::from(vec![
            Span::styled("fulcrum top: ", BOLD),
            Span::raw(format!("{} ", self.latest.interface)),
            attached,
            Span::raw(format!(
                ", generation {}, window {} s, {}",
                report.generation,
                report.window_s,
                clock(self.answered)
            )),
        ])
    }

    /// Draws the VIPs from the first scrolled to, the last one cut if it
    /// does not fit; returns the first and how many were shown whole.
    fn draw_vips(&self, frame: &mut Frame, area: Rect) -> (usize, usize) {
        let vips = &self.latest.report.vips;
        if vips.is_empty() {
            frame.render_widget(Paragraph::new("no VIPs installed"), area);
            return (0, 0);
        }
        let first = self.scroll.min(self.last_vip());
        let mut y = area.y;
        let mut count = 0;
        for vip in &vips[first..] {
            let room = area.bottom().saturating_sub(y);
            if room == 0 {
                break;
            }
            let whole = vip_height(vip);
            let height = whole.min(room);
            self.draw_vip(frame, Rect { y, height, ..area }, vip);
            y += height;
            count += usize::from(height == whole);
        }
        (first, count)
    }

    fn draw_vip(&self, frame: &mut Frame, area: Rect, vip: &VipReport) {
        let panic = vip.health.as_ref().is_some_and(|h| h.panic);
        let imbalanced = vip.backends.iter().any(|b| b.imbalanced);
        let alarm = panic || imbalanced;
        let flag = if panic {
            Span::styled(" PANIC: all backends kept ", RED_BOLD)
        } else if imbalanced {
            Span::styled(
                format!(" IMBALANCED {:.2}x ", vip.imbalance_ratio),
                RED_BOLD,
            )
        } else {
            Span::raw(format!(" imbalance {:.2}x ", vip.imbalance_ratio))
        };
        let title = Line::from(vec![
            Span::styled(format!(" {} ", vip.name), BOLD),
            Span::raw(format!("{} ", vip.endpoint)),
        ]);
        let block = Block::new()
            .borders(Borders::TOP)
            .border_style(if alarm { RED_BOLD } else { DIM })
            .title(title)
            .title_top(Line::from(flag).right_aligned());
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let [summary, table] =
            Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(inner);
        let [packets, bytes, flows] = self.rates.texts(|f| Counter::Vip(vip.name.clone(), f));
        let summary_lines = vec![
            Line::from(format!(
                "now {packets} pkt/s  {bytes}/s  {flows} new flows/s · {:.1} new flows/s over \
                 the window",
                vip.flow_rate
            )),
            Line::from(format!(
                "total {} pkt  {}B  {} flows · changed: {}",
                human(vip.packets as f64),
                human(vip.bytes as f64),
                human(vip.new_flows as f64),
                describe_change(vip.last_change.as_ref())
            )),
        ];
        frame.render_widget(Paragraph::new(summary_lines), summary);
        frame.render_widget(self.backend_table(vip, table.width), table);
    }

    /// The backends of `vip` as a table `width` columns wide.
    fn backend_table(&self, vip: &VipReport, width: u16) -> Table<'static> {
        let widest = |text: fn(&BackendReport) -> &str, min: u16, max: u16| {
            let widest = vip.backends.iter().map(|b| Span::raw(text(b)).width());
            (widest.max().unwrap_or(0) as u16).clamp(min, max)
        };
        let mut widths = vec![widest(|b| &b.name, 7, 16), widest(|b| &b.address, 7, 40)];
        widths.extend(NUMBER_COLUMNS.iter().map(|&(_, width)| width));
        let spacing = widths.len() as u16;
        let share_width = width.saturating_sub(widths.iter().sum::<u16>() + spacing);
        widths.push(share_width);
        let bar_width = usize::from(share_width.saturating_sub(SHARE_TEXT_WIDTH + 1));
        // Bars are scaled to the VIP's largest share, so that small shares
        // still show; the percentages say the scale.
        let scale = vip
            .backends
            .iter()
            .map(|b| b.observed_share.max(b.expected_share))
            .fold(0.0, f64::max);
        let mut header = vec![Cell::from("backend"), Cell::from("address")];
        header.extend(NUMBER_COLUMNS.iter().map(|&(name, _)| right(name.into())));
        header.push(Cell::from("obs/exp share"));
        let rows = vip.backends.iter().map(|b| {
            let [packets, bytes, flows] = self
                .rates
                .texts(|f| Counter::Backend(vip.name.clone(), b.name.clone(), f));
            let mut share = vec![Line::from(share_spans(b, scale, bar_width))];
            let flag = match (b.held_out, b.imbalanced) {
                (true, _) => Some(Span::styled("held out: no MAC", RED_BOLD)),
                (false, true) => Some(Span::styled(
                    format!("IMBALANCED for {} s", b.skewed_for_s.unwrap_or(0)),
                    RED_BOLD,
                )),
                (false, false) => None,
            };
            let name_style = if flag.is_some() { RED_BOLD } else { BOLD };
            let height = if flag.is_some() { 2 } else { 1 };
            share.extend(flag.map(Line::from));
            Row::new(vec![
                Cell::from(b.name.clone()).style(name_style),
                Cell::from(b.address.clone()),
                right(b.weight.to_string()),
                match b.health.as_str() {
                    "down" => right("DOWN".into()).style(RED_BOLD),
                    "up" => right("up".into()),
                    _ => right("-".into()),
                },
                right(packets),
                right(bytes),
                right(flows),
                Cell::from(Text::from(share)),
            ])
            .height(height)
        });
        Table::new(rows, widths.into_iter().map(Constraint::Length))
            .header(Row::new(header).style(DIM))
            .column_spacing(1)
    }

    /// The verdict counters that moved since the answer before (drops in
    /// red), and the keys.
    fn footer(&self, (first, count): (usize, usize)) -> Paragraph<'static> {
        let mut verdicts = vec![Span::styled("verdicts/s:", BOLD)];
        let mut known = false;
        for name in self.latest.report.reasons.keys() {
            let Some(rate) = self.rates.of(&Counter::Reason(name.clone())) else {
                continue;
            };
            known = true;
            if rate > 0.0 {
                let dropped = Reason::by_name(name).is_some_and(|r| r.action() == "drop");
                let style = if dropped { RED_BOLD } else { Style::new() };
                verdicts.push(Span::styled(format!(" {name} {}", human(rate)), style));
            }
        }
        if verdicts.len() == 1 {
            verdicts.push(Span::raw(if known { " none moved" } else { " -" }));
        }
        let total = self.latest.report.vips.len();
        let mut keys = vec![Span::styled("q", BOLD), Span::raw(" quit")];
        if count < total {
            keys.push(Span::styled("  ↑/↓", BOLD));
            keys.push(Span::raw(format!(
                " scroll (VIPs {}-{} of {total})",
                first + 1,
                first + count.max(1)
            )));
        }
        keys.push(Span::styled(
            "  bars: █ observed share of new flows, ┃ expected (table) share",
            DIM,
        ));
        Paragraph::new(vec![Line::from(verdicts), Line::from(keys)])
    }
}

/// Lines a VIP takes: its title rule, rates, totals, the table's header,
/// and its backends (two lines for a flagged one).
fn vip_height(vip: &VipReport) -> u16 {
    let rows: usize = vip
        .backends
        .iter()
        .map(|b| if b.held_out || b.imbalanced { 2 } else { 1 })
        .sum();
    u16::try_from(rows + 4).unwrap_or(u16::MAX)
}

/// A right-aligned cell.
fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

/// `33/33%` and a bar of `width` cells: the observed share in eighths of a
/// cell, a `┃` where the expected share ends, both relative to `scale`.
fn share_spans(b: &BackendReport, scale: f64, width: usize) -> Vec<Span<'static>> {
    let text = format!(
        "{}/{}%",
        percent(b.observed_share),
        percent(b.expected_share)
    );
    let mut spans = vec![Span::raw(format!(
        "{text:>width$} ",
        width = usize::from(SHARE_TEXT_WIDTH)
    ))];
    if width == 0 || scale <= 0.0 {
        return spans;
    }
    let color = if b.imbalanced {
        Color::Red
    } else {
        Color::Green
    };
    let eighths = ((b.observed_share / scale * (width * 8) as f64).round() as usize).min(width * 8);
    let marker = (b.expected_share > 0.0)
        .then(|| ((b.expected_share / scale * width as f64).ceil() as usize).clamp(1, width) - 1);
    for cell in 0..width {
        let filled = (eighths / 8, eighths % 8);
        let (symbol, mut style) = match cell.cmp(&filled.0) {
            std::cmp::Ordering::Less => ("█", Style::new().fg(color)),
            std::cmp::Ordering::Equal if filled.1 > 0 => (
                ["▏", "▎", "▍", "▌", "▋", "▊", "▉"][filled.1 - 1],
                Style::new().fg(color),
            ),
            _ => (" ", Style::new()),
        };
        if marker == Some(cell) {
            if symbol != " " {
                style = style.bg(color);
            }
            spans.push(Span::styled(
                "┃",
                style.fg(Color::Yellow).add_modifier(Modifier::BOLD),
            ));
        } else {
            spans.push(Span::styled(symbol, style));
        }
    }
    spans
}

/// A share (0..1) as a percentage: `33`, `5.2`.
fn percent(share: f64) -> String {
    let percent = share * 100.0;
    if percent >= 9.95 {
        format!("{percent:.0}")
    } else {
        format!("{percent:.1}")
    }
}

/// `value` in at most 5 characters with an SI prefix: `0`, `12.5`, `512`,
/// `1.2k`, `12.3k`, `123k`, `1.5M`.
fn human(value: f64) -> String {
    let mut scaled = value;
    let mut prefix = "";
    for next in ["k", "M", "G", "T", "P", "E"] {
        if scaled < 999.5 {
            break;
        }
        scaled /= 1000.0;
        prefix = next;
    }
    if scaled >= 99.95 || (prefix.is_empty() && scaled.fract() == 0.0) {
        format!("{scaled:.0}{prefix}")
    } else {
        format!("{scaled:.1}{prefix}")
    }
}

/// `HH:MM:SS UTC` of `time`.
fn clock(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};
    use serde_json::json;

    use super::*;

    /// A daemon's status: VIP `web4` with backends b1..b3 of equal share,
    /// `counts` packets, 100 bytes a packet and a tenth as many new flows
    /// each; b3 flagged when `skewed`.
    fn status(counts: [u64; 3], skewed: bool) -> StatusAnswer {
        let backends: Vec<_> = counts
            .iter()
            .enumerate()
            .map(|(i, &packets)| {
                json!({
                    "name": format!("b{}", i + 1), "address": format!("198.18.0.{}:80", i + 11),
                    "weight": 1, "expected_share": 1.0 / 3.0,
                    "observed_share": if skewed { [0.1, 0.1, 0.8][i] } else { 1.0 / 3.0 },
                    "packets": packets, "bytes": packets * 100, "new_flows": packets / 10,
                    "held_out": false, "imbalanced": skewed && i == 2,
                    "skewed_for_s": (skewed && i == 2).then_some(12),
                })
            })
            .collect();
        let total: u64 = counts.iter().sum();
        let answer = Answer {
            status: 200,
            body: json!({
                "interface": "eth0", "bank": 0, "config": "/etc/fulcrum.toml", "pins": "/sys/fs/bpf",
                "attached": !skewed, "generation": 3, "window_s": 10,
                "vips": [{
                    "name": "web4", "endpoint": "198.18.100.1:80/tcp",
                    "packets": total, "bytes": total * 100, "new_flows": total / 10,
                    "flow_rate": 30.0, "imbalance_ratio": if skewed { 2.4 } else { 1.0 },
                    "last_change": null, "backends": backends,
                }],
                "reasons": {"tx": total, "drop_no_backend": total / 100, "pass_not_ip": 7},
            }),
        };
        decode(answer).expect("a status")
    }

    fn screen(top: &Top, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| top.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..height {
            for x in 0..width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn the_daemons_status_is_read_into_the_report() {
        let status = status([10, 20, 30], false);
        assert_eq!(status.interface, "eth0");
        assert_eq!(status.report.vips[0].backends[2].packets, 30);
        let refused = Answer {
            status: 503,
            body: json!({"error": "nothing is installed"}),
        };
        let why = format!("{:#}", decode(refused).unwrap_err());
        assert_eq!(why, "the daemon answered: nothing is installed");
        let odd = Answer {
            status: 200,
            body: json!({"interface": "eth0"}),
        };
        let why = format!("{:#}", decode(odd).unwrap_err());
        assert!(why.contains("not a report top can read"), "{why}");
    }

    #[test]
    fn rates_come_from_two_answers_and_restart_when_a_counter_goes_back() {
        let start = Instant::now();
        let packets = Counter::Backend("web4".into(), "b2".into(), Field::Packets);
        let mut rates = Rates::default();
        rates.update(start, counters(&status([0, 100, 0], false).report));
        assert_eq!(rates.of(&packets), None, "the first answer has no rate");
        let later = start + Duration::from_secs(2);
        rates.update(later, counters(&status([0, 500, 0], false).report));
        assert_eq!(rates.of(&packets), Some(200.0));
        let restarted = later + Duration::from_secs(1);
        rates.update(restarted, counters(&status([0, 50, 0], false).report));
        assert_eq!(rates.of(&packets), None, "a counter that went back");
        rates.update(
            restarted + Duration::from_secs(1),
            counters(&status([0, 80, 0], false).report),
        );
        assert_eq!(
            rates.of(&packets),
            Some(30.0),
            "and counts again from there"
        );
        assert_eq!(
            rates.texts(|f| Counter::Backend("web4".into(), "b2".into(), f)),
            ["30".to_string(), "3.0kB".into(), "3".into()]
        );
    }

    #[test]
    fn numbers_are_short_for_people() {
        let cases = [
            (0.0, "0"),
            (3.0, "3"),
            (12.46, "12.5"),
            (512.0, "512"),
            (999.4, "999"),
            (999.6, "1.0k"),
            (1234.0, "1.2k"),
            (12_345.0, "12.3k"),
            (123_456.0, "123k"),
            (1.5e6, "1.5M"),
            (2.0e18, "2.0E"),
        ];
        for (value, text) in cases {
            assert_eq!(human(value), text, "{value}");
        }
        assert_eq!(percent(1.0 / 3.0), "33");
        assert_eq!(percent(0.052), "5.2");
        assert_eq!(
            clock(UNIX_EPOCH + Duration::from_secs(86_400 + 3723)),
            "01:02:03 UTC"
        );
    }

    #[test]
    fn the_share_bar_fills_eighths_and_marks_the_expected_share() {
        let mut b = status([1, 1, 1], false).report.vips[0].backends[0].clone();
        b.observed_share = 0.25;
        b.expected_share = 0.5;
        let bar: String = share_spans(&b, 1.0, 10)
            .iter()
            .map(|s| s.content.as_ref())
            .collect();
        assert_eq!(bar, "  25/50% ██▌ ┃     ");
        b.observed_share = 1.0;
        let bar: String = share_spans(&b, 1.0, 4)
            .iter()
            .map(|s| s.content.as_ref())
            .collect();
        assert_eq!(bar, " 100/50% █┃██");
        assert_eq!(share_spans(&b, 1.0, 0).len(), 1, "no room, no bar");
    }

    #[test]
    fn the_view_fits_80_columns_with_rates_after_the_second_answer() {
        let start = Instant::now();
        let mut top = Top::new(status([0, 0, 0], false), start, Duration::from_secs(1));
        let first = screen(&top, 80, 24);
        assert!(
            first.contains("fulcrum top: eth0 attached, generation 3"),
            "{first}"
        );
        assert!(first.contains("web4"), "{first}");
        assert!(first.contains("now - pkt/s  -/s  - new flows/s"), "{first}");
        assert!(first.contains("verdicts/s: -"), "{first}");
        assert!(first.contains("q quit"), "{first}");
        top.take(
            start + Duration::from_secs(1),
            SystemTime::now(),
            Ok(Box::new(status([1000, 1000, 8000], true))),
        );
        let second = screen(&top, 80, 24);
        assert!(second.contains("NOT ATTACHED"), "{second}");
        assert!(second.contains("IMBALANCED 2.40x"), "{second}");
        assert!(second.contains("IMBALANCED for 12 s"), "{second}");
        assert!(
            second.contains("now 10.0k pkt/s  1.0MB/s  1.0k new flows/s"),
            "{second}"
        );
        let b3 = second.lines().find(|l| l.contains("b3")).expect("b3's row");
        assert!(
            b3.contains("8.0k") && b3.contains("800kB") && b3.contains("80/33%"),
            "{b3}"
        );
        assert!(b3.contains('█') && b3.contains('┃'), "{b3}");
        assert!(second.contains("drop_no_backend 100"), "{second}");
        assert!(
            !second.contains("pass_not_ip"),
            "a counter that did not move: {second}"
        );
        top.take(
            Instant::now(),
            SystemTime::now(),
            Err(anyhow::anyhow!("gone")),
        );
        let failed = screen(&top, 80, 24);
        assert!(
            failed.contains("no answer from the daemon: gone"),
            "{failed}"
        );
        assert!(failed.contains("web4"), "the last answer stays: {failed}");
    }

    #[test]
    fn a_small_terminal_scrolls_and_a_tiny_one_draws_without_panicking() {
        let mut many = status([1, 2, 3], false);
        let web4 = many.report.vips[0].clone();
        many.report.vips = ["web4", "dns4", "web6", "dns6"]
            .iter()
            .map(|&name| VipReport {
                name: name.into(),
                ..web4.clone()
            })
            .collect();
        let mut top = Top::new(many, Instant::now(), Duration::from_secs(1));
        let view = screen(&top, 80, 20);
        assert!(view.contains("scroll (VIPs 1-2 of 4)"), "{view}");
        let down = KeyEvent::new(KeyCode::Down, KeyModifiers::NONE);
        for _ in 0..10 {
            assert!(top.press(down).is_continue());
        }
        let view = screen(&top, 80, 20);
        assert!(view.contains("dns6") && !view.contains("web4"), "{view}");
        for (width, height) in [(1, 1), (10, 3), (0, 0), (200, 2)] {
            screen(&top, width, height);
        }
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let mut top = Top::new(
            status([1, 2, 3], false),
            Instant::now(),
            Duration::from_secs(1),
        );
        let quits = [
            (KeyCode::Char('q'), KeyModifiers::NONE),
            (KeyCode::Char('Q'), KeyModifiers::SHIFT),
            (KeyCode::Esc, KeyModifiers::NONE),
            (KeyCode::Char('c'), KeyModifiers::CONTROL),
        ];
        for (code, modifiers) in quits {
            assert!(
                top.press(KeyEvent::new(code, modifiers)).is_break(),
                "{code:?}"
            );
        }
        let stays = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::NONE);
        assert!(top.press(stays).is_continue());
    }
}
