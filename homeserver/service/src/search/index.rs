//! The full-text index of room events (tantivy), knowing nothing of users or visibility: it
//! stores, per event, its ids, room, sender, type, stream position and the searchable texts
//! (`content.body`, `content.name`, `content.topic`), and answers candidate events for a query
//! restricted to a set of rooms.
//!
//! Texts go through a tokenizer that splits on non-alphanumerics, lower-cases and folds accents,
//! so that `reunion` finds « Réunion ». Each commit records, as its payload, the stream positions
//! it covers (see [`Covered`]): a restart resumes from there.

use std::path::{Path, PathBuf};

use tantivy::{
    collector::{Count, TopDocs},
    directory::MmapDirectory,
    indexer::IndexWriterOptions,
    query::{BooleanQuery, Occur, Query, QueryParser, TermSetQuery},
    schema::{
        Field, IndexRecordOption, NumericOptions, OwnedValue, Schema, TextFieldIndexing, TextOptions, STORED, STRING,
    },
    tokenizer::{AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, TokenStream},
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

/// The analyzer of searchable texts.
const ANALYZER: &str = "diplomatie_text";

/// The searchable keys of the spec (`keys` of a search request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Body,
    Name,
    Topic,
}

/// The stream positions whose events the index holds: every indexable event from `low` to
/// `high`. Events written here take positions above 0, going up (`high`); history fetched from
/// other servers takes positions below 0, going down (`low`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Covered {
    pub high: i64,
    pub low: i64,
}

impl Covered {
    /// Up to `high`, nothing below 0.
    pub fn up_to(high: i64) -> Covered {
        Covered { high, low: 0 }
    }

    /// Whether the position is inside.
    pub fn holds(&self, stream: i64) -> bool {
        (self.low..=self.high).contains(&stream)
    }

    /// The union of two (adjacent) ranges.
    pub fn union(self, other: Covered) -> Covered {
        Covered { high: self.high.max(other.high), low: self.low.min(other.low) }
    }

    /// A payload: `high`, or `high low` (older indexes hold the first form).
    fn parse(payload: &str) -> Option<Covered> {
        let mut parts = payload.split_whitespace();
        let high = parts.next()?.parse().ok()?;
        let low = match parts.next() {
            Some(l) => l.parse().ok()?,
            None => 0,
        };
        Some(Covered { high, low })
    }
}

impl std::fmt::Display for Covered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.high, self.low)
    }
}

/// An event as the index keeps it.
#[derive(Clone, Debug)]
pub struct IndexedEvent {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub kind: String,
    pub stream: i64,
    pub body: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
}

/// A page of candidates: (event id, score), and how many events match in all.
#[derive(Debug, Default)]
pub struct Candidates {
    pub hits: Vec<(String, f32)>,
    pub count: usize,
}

#[derive(Clone, Copy)]
struct Fields {
    event_id: Field,
    room_id: Field,
    sender: Field,
    kind: Field,
    stream: Field,
    body: Field,
    name: Field,
    topic: Field,
}

pub struct SearchIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    /// Made when there is something to write, dropped after each commit (with its threads,
    /// queue and buffers: about 10 MB the server does not keep while nothing is indexed).
    writer: std::sync::Mutex<Option<IndexWriter<TantivyDocument>>>,
    writer_bytes: usize,
    fields: Fields,
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it when absent. `writer_bytes` bounds the memory the
    /// writer buffers before it flushes a segment (tantivy's minimum is 15 MB).
    pub fn open(dir: &Path, writer_bytes: usize) -> tantivy::Result<SearchIndex> {
        std::fs::create_dir_all(dir)?;
        let mut builder = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let fields = Fields {
            event_id: builder.add_text_field("event_id", STRING | STORED),
            room_id: builder.add_text_field("room_id", STRING),
            sender: builder.add_text_field("sender", STRING),
            kind: builder.add_text_field("type", STRING),
            stream: builder.add_i64_field("stream", NumericOptions::default().set_fast().set_indexed()),
            body: builder.add_text_field("body", text.clone()),
            name: builder.add_text_field("name", text.clone()),
            topic: builder.add_text_field("topic", text),
        };
        let index = Index::open_or_create(MmapDirectory::open(dir)?, builder.build())?;
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer_bytes = writer_bytes.max(15_000_000);
        Ok(SearchIndex { dir: dir.to_owned(), index, reader, writer: Default::default(), writer_bytes, fields })
    }

    /// Runs `f` with the writer, made first when there is none.
    fn with_writer<T>(
        &self,
        f: impl FnOnce(&mut IndexWriter<TantivyDocument>) -> tantivy::Result<T>,
    ) -> tantivy::Result<T> {
        f(self.writer_in(&mut self.writer.lock().unwrap())?)
    }

    /// The writer in `slot`, made when there is none. Another writer may hold the index's lock
    /// for a moment (services of this process being shut down): it is awaited a few seconds.
    fn writer_in<'a>(
        &self,
        slot: &'a mut Option<IndexWriter<TantivyDocument>>,
    ) -> tantivy::Result<&'a mut IndexWriter<TantivyDocument>> {
        if slot.is_none() {
            let mut attempts = 0;
            let writer = loop {
                // One indexing thread and one merging thread: the writer lives only for a
                // commit, and every thread it starts costs a stack and an allocator cache.
                let options = IndexWriterOptions::builder()
                    .num_worker_threads(1)
                    .num_merge_threads(1)
                    .memory_budget_per_thread(self.writer_bytes)
                    .build();
                match self.index.writer_with_options(options) {
                    Err(tantivy::TantivyError::LockFailure(..)) if attempts < 50 => {
                        attempts += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    other => break other?,
                }
            };
            *slot = Some(writer);
        }
        Ok(slot.as_mut().expect("made above"))
    }

    /// The stream positions the last commit covers (none for a new index).
    pub fn committed(&self) -> Covered {
        self.index.load_metas().ok().and_then(|m| m.payload).and_then(|p| Covered::parse(&p)).unwrap_or_default()
    }

    /// Adds events; visible to searches after [`SearchIndex::commit`]. `covered` is what the
    /// index held before (its last commit's positions): an event there replaces its copy.
    /// Others are only added, which spares the commit looking each one up in every segment.
    pub fn add(&self, events: &[IndexedEvent], covered: Covered) -> tantivy::Result<()> {
        self.with_writer(|writer| self.add_with(writer, events, covered))
    }

    fn add_with(
        &self,
        writer: &mut IndexWriter<TantivyDocument>,
        events: &[IndexedEvent],
        covered: Covered,
    ) -> tantivy::Result<()> {
        let f = self.fields;
        for e in events {
            if covered.holds(e.stream) {
                writer.delete_term(Term::from_field_text(f.event_id, &e.event_id));
            }
            let mut doc = TantivyDocument::default();
            doc.add_text(f.event_id, &e.event_id);
            doc.add_text(f.room_id, &e.room_id);
            doc.add_text(f.sender, &e.sender);
            doc.add_text(f.kind, &e.kind);
            doc.add_i64(f.stream, e.stream);
            for (field, text) in [(f.body, &e.body), (f.name, &e.name), (f.topic, &e.topic)] {
                if let Some(t) = text {
                    doc.add_text(field, t);
                }
            }
            writer.add_document(doc)?;
        }
        Ok(())
    }

    /// Removes events (redacted ones).
    pub fn delete(&self, event_ids: &[String]) -> tantivy::Result<()> {
        if event_ids.is_empty() {
            return Ok(());
        }
        self.with_writer(|writer| {
            for id in event_ids {
                writer.delete_term(Term::from_field_text(self.fields.event_id, id));
            }
            Ok(())
        })
    }

    /// Makes everything added durable and searchable, recording `covered` as covered; the
    /// writer then finishes its merges and goes.
    pub fn commit(&self, covered: Covered) -> tantivy::Result<()> {
        let writer = {
            let mut slot = self.writer.lock().unwrap();
            let mut prepared = self.writer_in(&mut slot)?.prepare_commit()?;
            prepared.set_payload(&covered.to_string());
            prepared.commit()?;
            slot.take()
        };
        if let Some(writer) = writer {
            writer.wait_merging_threads()?;
        }
        self.reader.reload()
    }

    /// Empties the index (before a rebuild).
    pub fn clear(&self) -> tantivy::Result<()> {
        self.with_writer(|writer| writer.delete_all_documents().map(drop))?;
        self.commit(Covered::default())
    }

    /// The words of a search term as the index sees them (the spec's `highlights`).
    pub fn words(term: &str) -> Vec<String> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(term);
        let mut words = Vec::new();
        while stream.advance() {
            let w = stream.token().text.clone();
            if !words.contains(&w) {
                words.push(w);
            }
        }
        words
    }

    /// Events matching `term` in `keys`, within `rooms`, best first (or newest first with
    /// `recent`), skipping the first `offset`.
    pub fn search(
        &self,
        term: &str,
        keys: &[Key],
        rooms: &[String],
        recent: bool,
        offset: usize,
        limit: usize,
    ) -> tantivy::Result<Candidates> {
        if rooms.is_empty() || keys.is_empty() || Self::words(term).is_empty() {
            return Ok(Candidates::default());
        }
        let f = self.fields;
        let fields: Vec<Field> = keys
            .iter()
            .map(|k| match k {
                Key::Body => f.body,
                Key::Name => f.name,
                Key::Topic => f.topic,
            })
            .collect();
        let mut parser = QueryParser::for_index(&self.index, fields);
        // Every word must match, as users expect of a search box.
        parser.set_conjunction_by_default();
        let (text, _errors) = parser.parse_query_lenient(term);
        let in_rooms = TermSetQuery::new(rooms.iter().map(|r| Term::from_field_text(f.room_id, r)));
        let query = BooleanQuery::new(vec![(Occur::Must, text), (Occur::Must, Box::new(in_rooms) as Box<dyn Query>)]);
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(limit.max(1)).and_offset(offset);
        let (addresses, count): (Vec<(f32, DocAddress)>, usize) = if recent {
            let (docs, count) =
                searcher.search(&query, &(top.order_by_fast_field::<i64>("stream", Order::Desc), Count))?;
            (docs.into_iter().map(|(_, a)| (0.0, a)).collect(), count)
        } else {
            searcher.search(&query, &(top.order_by_score(), Count))?
        };
        let mut hits = Vec::with_capacity(addresses.len());
        for (score, address) in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(OwnedValue::Str(id)) = doc.get_first(f.event_id).map(OwnedValue::from) {
                hits.push((id, score));
            }
        }
        Ok(Candidates { hits, count })
    }

    /// The bytes the index takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, room: &str, stream: i64, body: &str) -> IndexedEvent {
        IndexedEvent {
            event_id: id.into(),
            room_id: room.into(),
            sender: "@a:x".into(),
            kind: "m.room.message".into(),
            stream,
            body: Some(body.into()),
            name: None,
            topic: None,
        }
    }

    #[test]
    fn finds_words_in_allowed_rooms_ranked_or_recent_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), 15_000_000).unwrap();
        index
            .add(
                &[
                    event("$1", "!a", 1, "Réunion de crise à Berlin"),
                    event("$2", "!a", 2, "crise crise crise"),
                    event("$3", "!b", 3, "crise au Sahel"),
                    event("$4", "!a", 4, "déjeuner"),
                ],
                Covered::default(),
            )
            .unwrap();
        index.commit(Covered::up_to(4)).unwrap();
        let rooms = vec!["!a".to_owned()];
        let ids = |c: Candidates| c.hits.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        // Accents folded, other rooms excluded, the denser match first.
        assert_eq!(ids(index.search("CRISE", &[Key::Body], &rooms, false, 0, 10).unwrap()), ["$2", "$1"]);
        assert_eq!(ids(index.search("reunion", &[Key::Body], &rooms, false, 0, 10).unwrap()), ["$1"]);
        assert_eq!(ids(index.search("crise", &[Key::Body], &rooms, true, 0, 10).unwrap()), ["$2", "$1"]);
        assert_eq!(ids(index.search("crise", &[Key::Body], &rooms, true, 1, 10).unwrap()), ["$1"]);
        // All words must match.
        assert!(index.search("crise sahel", &[Key::Body], &rooms, false, 0, 10).unwrap().hits.is_empty());
        // Only the keys asked.
        assert!(index.search("crise", &[Key::Name], &rooms, false, 0, 10).unwrap().hits.is_empty());
        // Syntax is no error.
        assert!(index.search("crise AND (", &[Key::Body], &rooms, false, 0, 10).is_ok());
        index.delete(&["$2".to_owned()]).unwrap();
        index.commit(Covered { high: 5, low: -3 }).unwrap();
        drop(index);
        let index = SearchIndex::open(dir.path(), 15_000_000).unwrap();
        assert_eq!(index.committed(), Covered { high: 5, low: -3 });
        assert_eq!(Covered::parse("7"), Some(Covered::up_to(7)), "payloads of older indexes");
        let found = index.search("crise", &[Key::Body], &rooms, false, 0, 10).unwrap();
        assert_eq!((found.count, ids(found)), (1, vec!["$1".to_owned()]));
        assert_eq!(SearchIndex::words("Réunion, réunion! Crise"), ["reunion", "crise"]);
    }

    #[test]
    fn an_event_the_index_covers_is_replaced_others_are_added() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path(), 15_000_000).unwrap();
        index.add(&[event("$1", "!a", 1, "télégramme"), event("$2", "!a", 2, "note")], Covered::default()).unwrap();
        index.commit(Covered::up_to(2)).unwrap();
        // Indexed again (a catch-up that overlaps the last commit): one copy, the new one.
        index.add(&[event("$1", "!a", 1, "télégramme chiffré")], Covered::up_to(2)).unwrap();
        index.add(&[event("$3", "!a", 3, "télégramme")], Covered::up_to(2)).unwrap();
        index.commit(Covered::up_to(3)).unwrap();
        let rooms = vec!["!a".to_owned()];
        let found = index.search("télégramme", &[Key::Body], &rooms, false, 0, 10).unwrap();
        let mut ids: Vec<String> = found.hits.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        assert_eq!((found.count, ids), (2, vec!["$1".to_owned(), "$3".to_owned()]));
        assert_eq!(index.search("chiffre", &[Key::Body], &rooms, false, 0, 10).unwrap().count, 1);
    }
}
