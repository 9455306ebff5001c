//! Server-sent events (`text/event-stream`) read from the lines of a stream, by the WHATWG
//! rules (HTML Living Standard 9.2.6): `field: value` lines, a blank line ends an event, a line
//! starting with `:` is a comment (the server's keep-alive).

use std::io::BufRead;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:` (`message` when absent, as the standard says).
    pub name: String,
    /// `id:`, if the event had one.
    pub id: Option<String>,
    /// The `data:` lines joined with newlines.
    pub data: String,
}

/// The events in the lines of `R`, as they arrive; a read error ends them (after it is
/// returned).
#[derive(Debug)]
pub struct Events<R> {
    lines: std::io::Lines<R>,
    failed: bool,
}

impl<R: BufRead> Events<R> {
    /// Reads events from `reader`.
    pub fn new(reader: R) -> Self {
        Self { lines: reader.lines(), failed: false }
    }
}

impl<R: BufRead> Iterator for Events<R> {
    type Item = std::io::Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (mut name, mut id, mut data) = (String::new(), None, None::<String>);
        loop {
            let line = match self.lines.next()? {
                Ok(line) => line,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            if line.is_empty() {
                // An event without data is no event (the standard): its fields are forgotten.
                if let Some(data) = data.take() {
                    let name = if name.is_empty() { "message".to_owned() } else { name };
                    return Some(Ok(Event { name, id, data }));
                }
                (name, id) = (String::new(), None);
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = value.to_owned(),
                "id" => id = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                // Comments (keep-alives), `retry`, unknown fields.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<Event> {
        Events::new(text.as_bytes()).map(Result::unwrap).collect()
    }

    #[test]
    fn events_follow_the_standard() {
        let text = ": keep-alive\n\nevent: migration\nid: 3\ndata: {\"a\":1}\n\ndata: one\ndata:two\n\nevent: x\n\n";
        let parsed = events(text);
        assert_eq!(
            parsed,
            [
                Event { name: "migration".into(), id: Some("3".into()), data: "{\"a\":1}".into() },
                Event { name: "message".into(), id: None, data: "one\ntwo".into() },
            ]
        );
        // An event cut off by the end of the stream is not one.
        assert!(events("event: x\ndata: half").is_empty());
    }

    /// Moved from the CLI's `watch`: data split over lines, a final event without its blank line.
    #[test]
    fn the_event_stream_parses_by_the_standard() {
        let text = ": keep-alive\n\nevent: migration\nid: 7\ndata: {\"a\":\ndata:1}\n\ndata: plain\n\nevent: error\n";
        assert_eq!(
            events(text),
            [
                Event { name: "migration".into(), id: Some("7".into()), data: "{\"a\":\n1}".into() },
                Event { name: "message".into(), id: None, data: "plain".into() },
            ],
            "a comment is no event, and an event needs its blank line"
        );
    }

    #[test]
    fn a_read_error_ends_the_events() {
        let bytes: &[u8] = b"data: ok\n\ndata: \xff\n\n";
        let mut all = Events::new(bytes);
        assert_eq!(all.next().unwrap().unwrap().data, "ok");
        assert!(all.next().unwrap().is_err());
        assert!(all.next().is_none());
    }
}
