//! The text/event-stream parser the streams feed their body chunks to, and
//! the payload of the bench's own messages.

pub(crate) enum Item {
    Event { name: String, data: String },
    Comment,
}

/// Minimal text/event-stream parser: lines end with LF (a CR before it is
/// dropped), a blank line dispatches, `event:` / `data:` are kept, `id:` and
/// `retry:` ignored, `:` lines are comments.
#[derive(Default)]
pub(crate) struct Sse {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl Sse {
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(p) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + p;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line, out);
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &str, out: &mut Vec<Item>) {
        if line.is_empty() {
            if self.has_data {
                let name = if self.event.is_empty() {
                    "message".to_string()
                } else {
                    std::mem::take(&mut self.event)
                };
                out.push(Item::Event {
                    name,
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            out.push(Item::Comment);
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

/// The data of a `bench` event: the sequence number of the send and the
/// clock reading when it started.
#[derive(serde::Deserialize)]
pub(crate) struct Mark {
    pub(crate) seq: u64,
    pub(crate) ts_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events and comments, in order, from `chunks` fed one by one.
    fn parse_bytes(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = Sse::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out.into_iter()
            .map(|i| match i {
                Item::Event { name, data } => (name, data),
                Item::Comment => (":".into(), String::new()),
            })
            .collect()
    }

    fn parse(chunks: &[&str]) -> Vec<(String, String)> {
        let bytes: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
        parse_bytes(&bytes)
    }

    fn events(chunks: &[&str]) -> Vec<(String, String)> {
        parse(chunks).into_iter().filter(|e| e.0 != ":").collect()
    }

    #[test]
    fn sse_frames_split_anywhere() {
        let text = "retry: 3000\n\nevent: connection_established\ndata: {\"a\":1}\n\n: heartbeat 1\n\nid: 1-0\r\nevent: bench\r\ndata: {\"seq\":3,\"ts_ns\":9}\r\n\r\ndata: x\ndata: y\n\n";
        let whole = events(&[text]);
        assert_eq!(
            whole,
            vec![
                ("connection_established".into(), "{\"a\":1}".into()),
                ("bench".into(), "{\"seq\":3,\"ts_ns\":9}".into()),
                ("message".into(), "x\ny".into()),
            ]
        );
        let bytes: Vec<String> = text.chars().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = bytes.iter().map(|s| s.as_str()).collect();
        assert_eq!(events(&refs), whole);
    }

    #[test]
    fn every_split_point_gives_the_same_items() {
        // a multi-byte character in the data, CRLF endings, a comment
        let text = "event: bench\r\ndata: {\"u\":\"é€\"}\r\n\r\n: hb\n\ndata: 1\n\n".as_bytes();
        let whole = parse_bytes(&[text]);
        assert_eq!(whole.len(), 3, "{whole:?}");
        assert_eq!(whole[0], ("bench".into(), "{\"u\":\"é€\"}".into()));
        assert_eq!(whole[1].0, ":");
        assert_eq!(whole[2], ("message".into(), "1".into()));
        // two chunks cut at every byte, inside the CRLF and inside a character
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(parse_bytes(&[a, b]), whole, "cut at byte {cut}");
        }
        // one byte a chunk
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse_bytes(&bytes), whole);
    }

    #[test]
    fn an_event_needs_data_and_a_blank_line() {
        // no data: nothing dispatched, and its name does not leak to the next
        assert_eq!(
            events(&["event: evicted\n\ndata: a\n\n"]),
            vec![("message".into(), "a".into())]
        );
        // not dispatched until the blank line arrives
        let mut p = Sse::default();
        let mut out = Vec::new();
        p.feed(b"event: bench\ndata: 1\n", &mut out);
        assert!(out.is_empty());
        p.feed(b"\n", &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn field_values_lose_one_leading_space_only() {
        assert_eq!(
            events(&["data:x\n\ndata:  y\n\ndata\n\nevent:bench\ndata: z \n\n"]),
            vec![
                ("message".into(), "x".into()),
                ("message".into(), " y".into()),
                // a bare `data` line is an empty data field
                ("message".into(), String::new()),
                ("bench".into(), "z ".into()),
            ]
        );
    }

    #[test]
    fn comments_are_counted_one_per_line() {
        let items = parse(&[": hb 1\n: hb 2\n\n:\n\n"]);
        assert_eq!(items.iter().filter(|e| e.0 == ":").count(), 3);
        assert_eq!(items.len(), 3, "{items:?}");
    }

    #[test]
    fn bench_marks_parse_from_the_event_data() {
        let m: Mark = serde_json::from_str("{\"seq\":3,\"ts_ns\":9}").expect("mark");
        assert_eq!((m.seq, m.ts_ns), (3, 9));
        assert!(serde_json::from_str::<Mark>("{\"seq\":3}").is_err());
    }
}
