//! The dashboard on screen: ratatui widgets for a [`View`], the keyboard, and the
//! terminal's lifetime.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::client::Connection;
use localml_proto::localml::v1::admin_client::AdminClient;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::mpsc;

use super::{read, Reading, Usage, View};

/// Why the dashboard stopped before the user quit.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The scheduler refused or failed a ListWorkers or ListModels call.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Server(tonic::Status),
    /// The terminal could not be set up, drawn on or restored.
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
}

// Written out rather than `#[from]`, which would also make the wrapped error the
// `source()`, and error chains would print its text twice.
impl From<tonic::Status> for DashboardError {
    fn from(status: tonic::Status) -> DashboardError {
        DashboardError::Server(status)
    }
}

impl From<std::io::Error> for DashboardError {
    fn from(e: std::io::Error) -> DashboardError {
        DashboardError::Terminal(e)
    }
}

/// The frame as plain text, one line a row, as a terminal `width` x `height` would show
/// it (trailing blanks trimmed).
pub fn text_frame(view: &View, width: u16, height: u16) -> String {
    // The test backend cannot fail: its error type is uninhabited.
    let Ok(mut terminal) =
        ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height));
    let Ok(_) = terminal.draw(|f| draw(f, view));
    let buffer = terminal.backend().buffer();
    let lines: Vec<String> = (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect();
    lines.join("\n").trim_end().to_string() + "\n"
}

/// A horizontal bar: `[#####.....]`, `fraction` of `width` filled. Plain characters rather
/// than ratatui's Gauge, so the bars read the same in a screen capture, a log or a pipe.
pub fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Cells a memory bar fills.
const BAR_WIDTH: usize = 10;

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

fn usage(u: Option<Usage>, none: &str) -> String {
    match u {
        Some(u) => format!("{} {}", bar(u.fraction(), BAR_WIDTH), gib(u.used)),
        None => none.into(),
    }
}

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => format!("{:.1}", s * 1e3),
        None => "-".into(),
    }
}

/// A numeric cell, right-aligned like the numbers in `top`.
fn number<'a>(text: String) -> Cell<'a> {
    Cell::from(Line::from(text).right_aligned())
}

/// A width that fits the header and every cell, but at least `min` so columns stay put
/// from frame to frame while names are short.
fn width<'a>(min: u16, header: &str, cells: impl Iterator<Item = &'a str>) -> Constraint {
    let widest = cells
        .map(|c| c.chars().count())
        .chain([header.chars().count()])
        .max()
        .unwrap_or(0);
    Constraint::Length(u16::try_from(widest).unwrap_or(u16::MAX).max(min))
}

/// A bold header row; the titles of numeric columns (`numeric`) are right-aligned over
/// their numbers.
fn header<'a>(titles: &[&'a str], numeric: Range<usize>) -> Row<'a> {
    Row::new(titles.iter().enumerate().map(|(i, t)| {
        if numeric.contains(&i) {
            number(t.to_string())
        } else {
            Cell::from(*t)
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD))
}

/// Lays a frame out: a title line, the workers table, the models table.
pub fn draw(frame: &mut Frame, view: &View) {
    let title = format!(
        "localml top - {} - {}/{} workers ready, {} model versions   (q or Ctrl-C quits)",
        view.title,
        view.ready,
        view.workers_total,
        view.models.len()
    );
    let worker_rows = u16::try_from(view.workers.len()).unwrap_or(u16::MAX);
    let [title_area, _, workers_area, _, models_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(worker_rows.saturating_add(1)),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title), title_area);

    let workers = Table::new(
        view.workers.iter().map(|w| {
            Row::new([
                Cell::from(w.name.clone()),
                Cell::from(w.state),
                Cell::from(usage(w.ram, "-")),
                Cell::from(usage(w.gpu, "no GPU")),
                Cell::from(w.power.clone()),
                Cell::from(w.energy.clone()),
                number(w.queue.to_string()),
                number(w.in_flight.to_string()),
                number(format!("{:.1}", w.rate)),
            ])
        }),
        [
            width(18, "WORKER", view.workers.iter().map(|w| w.name.as_str())),
            Constraint::Length(9),
            Constraint::Length(24),
            Constraint::Length(24),
            width(13, "POWER", view.workers.iter().map(|w| w.power.as_str())),
            width(8, "ENERGY", view.workers.iter().map(|w| w.energy.as_str())),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(7),
        ],
    )
    .header(header(
        &[
            "WORKER",
            "STATE",
            "RAM used",
            "GPU memory used",
            "POWER",
            "ENERGY",
            "QUEUE",
            "INFLIGHT",
            "REQ/S",
        ],
        6..9,
    ))
    .column_spacing(1);
    frame.render_widget(workers, workers_area);

    let models = Table::new(
        view.models.iter().map(|m| {
            Row::new([
                Cell::from(m.name.clone()),
                Cell::from(m.version.clone()),
                number(format!("{:.1}", m.rate)),
                number(ms(m.p50)),
                number(ms(m.p90)),
                number(ms(m.p99)),
                number(m.errors.to_string()),
                Cell::from(m.workers.join(",")),
            ])
        }),
        [
            width(22, "MODEL", view.models.iter().map(|m| m.name.as_str())),
            width(8, "VERSION", view.models.iter().map(|m| m.version.as_str())),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
    )
    .header(header(
        &[
            "MODEL", "VERSION", "REQ/S", "p50 ms", "p90 ms", "p99 ms", "ERRORS", "WORKERS",
        ],
        2..7,
    ))
    .column_spacing(1);
    frame.render_widget(models, models_area);
}

/// What the user asked for at the keyboard.
enum Input {
    Quit,
    /// The terminal changed size: draw the last frame again at once.
    Redraw,
}

/// `q` or Ctrl-C. In raw mode the terminal no longer turns Ctrl-C into SIGINT, so it
/// arrives as a key.
fn is_quit(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q') => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// How often the keyboard thread checks whether the dashboard is still listening.
const INPUT_POLL: Duration = Duration::from_millis(100);

/// Reads the keyboard on a thread of its own (crossterm's reads block) until the
/// receiver goes away or the user quits.
fn keyboard() -> mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !tx.is_closed() {
            // An error reading the terminal ends the thread; the dashboard keeps drawing
            // and SIGINT still quits.
            let Ok(ready) = event::poll(INPUT_POLL) else {
                return;
            };
            if !ready {
                continue;
            }
            let input = match event::read() {
                Ok(Event::Key(key)) if is_quit(&key) => Input::Quit,
                Ok(Event::Resize(..)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
    rx
}

/// Draws a frame every `interval` until the user quits (q, Ctrl-C, SIGINT) or, when
/// `frames` is not 0, after that many frames. The terminal is restored on every way out;
/// ratatui's panic hook restores it on a panic too.
pub async fn run(
    admin: &mut AdminClient<Connection>,
    title: &str,
    interval: Duration,
    frames: u32,
) -> Result<(), DashboardError> {
    let first = read(admin).await?;
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // Piped or logged: plain-text frames, one after another.
        return text_frames(admin, title, interval, frames, first).await;
    }
    let mut terminal = ratatui::try_init()?;
    let result = frames_until_quit(&mut terminal, admin, title, interval, frames, first).await;
    let restored = ratatui::try_restore();
    result?;
    Ok(restored?)
}

/// Successive readings turned into views, counted against `--frames`.
struct Sequence<'a> {
    title: &'a str,
    frames: u32,
    drawn: u32,
    previous: Reading,
    at: Instant,
}

impl<'a> Sequence<'a> {
    fn new(title: &'a str, frames: u32, first: Reading) -> Sequence<'a> {
        Sequence {
            title,
            frames,
            drawn: 0,
            previous: first,
            at: Instant::now(),
        }
    }

    /// The next view, from a fresh reading, with its number of rows (workers and models).
    async fn next(
        &mut self,
        admin: &mut AdminClient<Connection>,
    ) -> Result<(View, usize), DashboardError> {
        let current = read(admin).await?;
        let view = View::from_readings(&self.previous, &current, self.at.elapsed(), self.title);
        let rows = current.workers.len() + current.models.len();
        self.previous = current;
        self.at = Instant::now();
        self.drawn += 1;
        Ok((view, rows))
    }

    /// Whether `--frames` were drawn.
    fn done(&self) -> bool {
        self.frames > 0 && self.drawn >= self.frames
    }
}

async fn text_frames(
    admin: &mut AdminClient<Connection>,
    title: &str,
    interval: Duration,
    frames: u32,
    previous: Reading,
) -> Result<(), DashboardError> {
    let mut sequence = Sequence::new(title, frames, previous);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let (view, rows) = sequence.next(admin).await?;
        // Tall enough for every row: title, two headers, blank lines, workers, models.
        let height = u16::try_from(6 + rows).unwrap_or(u16::MAX);
        println!("{}", text_frame(&view, 150, height));
        if sequence.done() {
            return Ok(());
        }
    }
}

async fn frames_until_quit(
    terminal: &mut DefaultTerminal,
    admin: &mut AdminClient<Connection>,
    title: &str,
    interval: Duration,
    frames: u32,
    previous: Reading,
) -> Result<(), DashboardError> {
    let mut sequence = Sequence::new(title, frames, previous);
    let mut keys = keyboard();
    let mut tick = tokio::time::interval(interval);
    // A slow reading delays the next frame rather than bunching frames up after it.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; a frame needs a second reading an interval later.
    tick.tick().await;
    let mut view: Option<View> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(input) = keys.recv() => match input {
                Input::Quit => return Ok(()),
                Input::Redraw => {
                    if let Some(view) = &view {
                        terminal.draw(|f| draw(f, view))?;
                    }
                    continue;
                }
            },
        }
        let (next, _) = sequence.next(admin).await?;
        terminal.draw(|f| draw(f, &next))?;
        view = Some(next);
        if sequence.done() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::tests::{two_readings, worker};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The frame as text, one string a line, the way a terminal would show it.
    fn screen(view: &View, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
        terminal.draw(|f| draw(f, view)).expect("draw");
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn a_text_frame_is_the_screen_without_trailing_blanks() {
        let (previous, current) = two_readings();
        let view = View::from_readings(&previous, &current, Duration::from_secs(2), "test");
        let text = text_frame(&view, 150, 10);
        assert!(text.starts_with("localml top - test"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
        assert_eq!(
            text.lines().next(),
            screen(&view, 220, 10)[0].trim_end().into()
        );
    }

    #[test]
    fn bars_fill_by_fraction() {
        assert_eq!(bar(0.0, 4), "[....]");
        assert_eq!(bar(0.5, 4), "[##..]");
        assert_eq!(bar(2.0, 4), "[####]");
    }

    #[test]
    fn a_frame_shows_bars_power_rates_and_recent_percentiles() {
        let (previous, current) = two_readings();
        let view = View::from_readings(&previous, &current, Duration::from_secs(2), "test");
        let lines = screen(&view, 220, 10);
        let frame = lines.join("\n");
        assert!(
            lines[0].starts_with("localml top - test - 1/1 workers ready, 1 model versions"),
            "{frame}"
        );
        assert!(
            frame.contains("RAM used") && frame.contains("p99 ms"),
            "{frame}"
        );
        let row = lines
            .iter()
            .find(|l| l.starts_with("pc1"))
            .expect("worker row");
        assert!(
            row.contains("[########..] 6.0G"),
            "RAM 6 of 8 GiB used: {row}"
        );
        assert!(
            row.contains("[###.......] 4.0G"),
            "GPU 4 of 16 GiB used: {row}"
        );
        assert!(
            row.contains("battery (UPS ups1@10.0.0.5 OB DISCHRG) 64% 20m left"),
            "{row}"
        );
        assert!(row.contains("31.5 W 0.1250 J/inf"), "{row}");
        assert!(
            row.trim_end().ends_with("25.0"),
            "50 requests in 2 s: {row}"
        );
        let m = lines
            .iter()
            .find(|l| l.starts_with("m "))
            .expect("model row");
        assert!(m.contains("25.0") && m.contains("5.5"), "{m}");
        assert!(m.trim_end().ends_with(" pc1"), "{m}");
        let header = lines
            .iter()
            .find(|l| l.starts_with("MODEL"))
            .expect("model header");
        assert_eq!(
            header.find("WORKERS"),
            m.find("pc1"),
            "WORKERS heads its column:\n{frame}"
        );
    }

    #[test]
    fn long_names_widen_their_column_instead_of_being_cut() {
        let name = "a-worker-with-a-long-host-name";
        let (mut previous, mut current) = two_readings();
        previous.workers = vec![worker(name, 0)];
        current.workers = vec![worker(name, 10)];
        let view = View::from_readings(&previous, &current, Duration::from_secs(1), "t");
        let lines = screen(&view, 220, 10);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{name} Ready"))),
            "{}",
            lines.join("\n")
        );
    }

    #[test]
    fn q_and_ctrl_c_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(is_quit(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!is_quit(&key(KeyCode::Enter, KeyModifiers::NONE)));
    }
}
