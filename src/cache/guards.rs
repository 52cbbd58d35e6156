//! The semantic cache's guards (issue 16, stage b): what a bag of words
//! cannot see, checked on the two prompts' text before a similar stored
//! prompt may answer a new one. Two prompts pass only if they agree on
//! every one of:
//!
//! - **numbers**, digits or number words, in order ("3" = "three"; "17
//!   divided by 5" is not "5 divided by 17"), currency signs stripped;
//! - **units**, normalised ("kilometres" = "km"), as a multiset;
//! - **quoted text** ("…", '…', `…`, “…”), exactly and in order;
//! - **operators**: the arithmetic and comparison signs that stand between
//!   numbers or words (`(`, `)`, `+`, `-`, `*`, `/`, `=`, `<`, `>`, `^`),
//!   in order: "(10 - 4) * 2" is not "10 - (4 * 2)";
//! - **names**: capitalised words that are not ordinary words;
//! - **code identifiers**: tokens with `_`, `.`, `::`, `/`, `()`, a
//!   leading `-`, or camelCase;
//! - **negation**: how many negating words each has;
//! - **scope**: the quantifiers, bounds and modalities (all, every, only,
//!   first, per, before, required, optional, …), as a multiset;
//! - **direction and order**: around each directional word (to, into,
//!   from, than, then, vs, …) the nearest content words on either side form
//!   an ordered pair; a pair that one prompt has as (x, y) and the other as
//!   (y, x) fails;
//! - **word order**: the content words both prompts have once each come in
//!   the same order, or one prompt moves a prepositional phrase to the
//!   other end ("In Python, how do I …" = "How do I … in Python"): "Is
//!   every square a rectangle?" is not "Is every rectangle a square?".
//!
//! Deliberately strict: a guard that refuses a true paraphrase costs one
//! provider call; one that passes a near-miss serves a wrong answer. Pure
//! and allocation-light; no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// Why two prompts may not share an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    Numbers,
    Units,
    Quoted,
    Names,
    Identifiers,
    Negation,
    Scope,
    Direction,
    Operators,
    Order,
}

/// Whether `a` and `b` agree on everything the guards check.
pub fn compatible(a: &str, b: &str) -> Result<(), Mismatch> {
    agree(&Features::of(a), &Features::of(b))
}

/// Whether two prompts' features agree (see [`compatible`]): a lookup reads
/// its prompt's features once, whatever the number of candidates.
pub fn agree(fa: &Features, fb: &Features) -> Result<(), Mismatch> {
    let checks = [
        (fa.numbers == fb.numbers, Mismatch::Numbers),
        (fa.units == fb.units, Mismatch::Units),
        (fa.quoted == fb.quoted, Mismatch::Quoted),
        (
            names_agree(&fa.names, &fb.words) && names_agree(&fb.names, &fa.words),
            Mismatch::Names,
        ),
        (fa.identifiers == fb.identifiers, Mismatch::Identifiers),
        (fa.negations == fb.negations, Mismatch::Negation),
        (fa.scope == fb.scope, Mismatch::Scope),
        (!reversed(&fa.pairs, &fb.pairs), Mismatch::Direction),
        (fa.operators == fb.operators, Mismatch::Operators),
        (order_agrees(fa, fb), Mismatch::Order),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some(&(_, why)) => Err(why),
        None => Ok(()),
    }
}

/// What the guards read of one prompt (each list sorted for comparison,
/// except the numbers, the quoted text, the operators and the sequence,
/// whose order counts).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub numbers: Vec<String>,
    pub units: Vec<&'static str>,
    pub quoted: Vec<String>,
    pub names: Vec<String>,
    pub identifiers: Vec<String>,
    pub negations: usize,
    pub scope: Vec<&'static str>,
    /// (left, right) content words around each directional word.
    pub pairs: Vec<(String, String)>,
    /// Every word, lowercased: a name one prompt writes capitalised the
    /// other may write in lower case or at a sentence's start.
    pub words: Vec<String>,
    /// The operator signs between numbers or words, in order.
    pub operators: Vec<char>,
    /// The content words in order (stemmed), each with the two words
    /// before it (empty at the prompt's start).
    pub sequence: Vec<(String, [String; 2])>,
}

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
    ("half", "0.5"),
    ("twice", "2x"),
    ("double", "2x"),
    ("dozen", "12"),
];

/// Unit spellings and the unit they name.
const UNITS: &[(&str, &str)] = &[
    ("km", "km"),
    ("kms", "km"),
    ("kilometer", "km"),
    ("kilometers", "km"),
    ("kilometre", "km"),
    ("kilometres", "km"),
    ("m", "m"),
    ("meter", "m"),
    ("meters", "m"),
    ("metre", "m"),
    ("metres", "m"),
    ("cm", "cm"),
    ("centimeters", "cm"),
    ("centimetres", "cm"),
    ("mm", "mm"),
    ("millimeters", "mm"),
    ("mile", "mi"),
    ("miles", "mi"),
    ("mi", "mi"),
    ("yard", "yd"),
    ("yards", "yd"),
    ("yd", "yd"),
    ("foot", "ft"),
    ("feet", "ft"),
    ("ft", "ft"),
    ("inch", "in"),
    ("inches", "in"),
    ("kg", "kg"),
    ("kilogram", "kg"),
    ("kilograms", "kg"),
    ("kilos", "kg"),
    ("g", "g"),
    ("gram", "g"),
    ("grams", "g"),
    ("mg", "mg"),
    ("milligrams", "mg"),
    ("lb", "lb"),
    ("lbs", "lb"),
    ("pound", "lb"),
    ("pounds", "lb"),
    ("oz", "oz"),
    ("ounce", "oz"),
    ("ounces", "oz"),
    ("l", "l"),
    ("liter", "l"),
    ("liters", "l"),
    ("litre", "l"),
    ("litres", "l"),
    ("ml", "ml"),
    ("milliliters", "ml"),
    ("gallon", "gal"),
    ("gallons", "gal"),
    ("cup", "cup"),
    ("cups", "cup"),
    ("celsius", "c"),
    ("°c", "c"),
    ("fahrenheit", "f"),
    ("°f", "f"),
    ("kelvin", "k"),
    ("kb", "kb"),
    ("mb", "mb"),
    ("gb", "gb"),
    ("tb", "tb"),
    ("kib", "kib"),
    ("mib", "mib"),
    ("gib", "gib"),
    ("mph", "mph"),
    ("kph", "kph"),
    ("km/h", "kph"),
    ("usd", "usd"),
    ("eur", "eur"),
    ("gbp", "gbp"),
];

/// Time units, kept apart from the physical ones so "per day" / "per week"
/// also fail as units.
const TIME_UNITS: &[(&str, &str)] = &[
    ("second", "s"),
    ("seconds", "s"),
    ("sec", "s"),
    ("minute", "min"),
    ("minutes", "min"),
    ("hour", "h"),
    ("hours", "h"),
    ("hr", "h"),
    ("day", "d"),
    ("days", "d"),
    ("daily", "d"),
    ("week", "w"),
    ("weeks", "w"),
    ("weekly", "w"),
    ("month", "mo"),
    ("months", "mo"),
    ("monthly", "mo"),
    ("year", "y"),
    ("years", "y"),
    ("yearly", "y"),
    ("annually", "y"),
    ("ms", "ms"),
];

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nothing",
    "nobody",
    "neither",
    "nor",
    "without",
    "cannot",
    "can't",
    "don't",
    "doesn't",
    "didn't",
    "isn't",
    "aren't",
    "wasn't",
    "weren't",
    "won't",
    "wouldn't",
    "shouldn't",
    "couldn't",
    "hasn't",
    "haven't",
    "hadn't",
    "exclude",
];

/// Quantifiers and bounds, each with the class it means: "every" and
/// "each" say what "all" says, "tallest" what "highest" says.
const SCOPE: &[(&str, &str)] = &[
    ("all", "all"),
    ("every", "all"),
    ("each", "all"),
    ("any", "any"),
    ("some", "some"),
    ("only", "only"),
    ("first", "first"),
    ("last", "last"),
    ("most", "most"),
    ("largest", "most"),
    ("biggest", "most"),
    ("highest", "most"),
    ("greatest", "most"),
    ("longest", "most"),
    ("tallest", "most"),
    ("top", "most"),
    ("max", "most"),
    ("maximum", "most"),
    ("least", "least"),
    ("smallest", "least"),
    ("lowest", "least"),
    ("fewest", "least"),
    ("shortest", "least"),
    ("bottom", "least"),
    ("min", "least"),
    ("minimum", "least"),
    ("more", "more"),
    ("larger", "more"),
    ("bigger", "more"),
    ("higher", "more"),
    ("greater", "more"),
    ("longer", "more"),
    ("less", "less"),
    ("fewer", "less"),
    ("smaller", "less"),
    ("lower", "less"),
    ("shorter", "less"),
    ("before", "before"),
    ("after", "after"),
    ("since", "since"),
    ("until", "until"),
    ("above", "above"),
    ("below", "below"),
    ("over", "above"),
    ("under", "below"),
    ("per", "per"),
    ("always", "always"),
    ("never", "never"),
    ("sometimes", "sometimes"),
    ("often", "often"),
    ("rarely", "rarely"),
    ("usually", "usually"),
    ("oldest", "oldest"),
    ("newest", "newest"),
    ("earliest", "oldest"),
    ("latest", "newest"),
    // Modality: what is required is not what is recommended.
    ("required", "required"),
    ("require", "required"),
    ("requires", "required"),
    ("mandatory", "required"),
    ("compulsory", "required"),
    ("necessary", "required"),
    ("recommended", "recommended"),
    ("recommend", "recommended"),
    ("suggested", "recommended"),
    ("advised", "recommended"),
    ("optional", "optional"),
    ("allowed", "allowed"),
    ("permitted", "allowed"),
    ("legal", "allowed"),
    ("forbidden", "forbidden"),
    ("prohibited", "forbidden"),
    ("banned", "forbidden"),
    ("illegal", "forbidden"),
];

/// Words that lead a phrase a paraphrase may move to the other end.
const PREPOSITIONS: &[&str] = &[
    "in", "on", "for", "with", "using", "within", "inside", "at", "by", "via", "during", "through",
    "between", "about", "from",
];

/// Question words, which move what they ask about ("Russia has how many
/// time zones?" = "How many time zones does Russia have?").
const QUESTION_WORDS: &[&str] = &[
    "how", "what", "which", "who", "whom", "whose", "when", "where", "why",
];

/// Signs compared in order (when not inside a word: `e-mail`, `km/h`).
const OPERATORS: &[char] = &['(', ')', '+', '-', '*', '/', '=', '<', '>', '^', '×', '÷'];

/// Words after which "to" starts an infinitive.
const INFINITIVE_BEFORE: &[&str] = &[
    "how", "want", "wants", "need", "needs", "able", "trying", "try", "going", "way", "ways",
    "where", "what", "when", "used", "have", "has", "like", "best",
];

/// How many content words on each side of a directional word it relates.
const DIRECTION_WINDOW: usize = 3;

/// Words that relate what is on their left to what is on their right.
const DIRECTIONAL: &[&str] = &[
    "to", "into", "from", "than", "then", "vs", "versus", "->", "=>", "over", "before", "after",
    "onto", "towards",
];

/// Ordinary words: never names, never content words of a pair.
const COMMON: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "if",
    "of",
    "in",
    "on",
    "at",
    "by",
    "for",
    "with",
    "about",
    "as",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "what",
    "which",
    "who",
    "whom",
    "whose",
    "when",
    "where",
    "why",
    "how",
    "this",
    "that",
    "these",
    "those",
    "it",
    "its",
    "i",
    "me",
    "my",
    "we",
    "us",
    "our",
    "you",
    "your",
    "he",
    "she",
    "they",
    "them",
    "their",
    "there",
    "here",
    "please",
    "tell",
    "give",
    "show",
    "explain",
    "list",
    "write",
    "describe",
    "find",
    "get",
    "make",
    "let",
    "so",
    "just",
    "also",
    "some",
    "way",
    "ways",
    "best",
    "good",
    "kindly",
    "could",
    "want",
    "need",
    "know",
    "like",
    "quick",
    "quickly",
    "simple",
    "simply",
    "exactly",
    "really",
    "briefly",
    "short",
    "question",
    "hey",
    "hi",
    "hello",
    "thanks",
    "thank",
    "okay",
    "ok",
    "can't",
    "possible",
    "using",
    "use",
    "help",
    "me",
    "difference",
    "mean",
    "means",
    "meaning",
    "is",
    "are",
];

fn lookup(table: &HashMap<&'static str, &'static str>, word: &str) -> Option<&'static str> {
    table.get(word).copied()
}

fn is_common(lower: &str) -> bool {
    index().common.contains(lower)
}

/// The word tables as hash maps, built once: a lookup reads every token
/// against several tables of up to a few hundred words, and scanning them
/// was most of the guards' time.
struct Index {
    number_words: HashMap<&'static str, &'static str>,
    units: HashMap<&'static str, &'static str>,
    time_units: HashMap<&'static str, &'static str>,
    scope: HashMap<&'static str, &'static str>,
    irregular: HashMap<&'static str, &'static str>,
    common: HashSet<&'static str>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let map = |t: &[(&'static str, &'static str)]| t.iter().copied().collect();
        Index {
            number_words: map(NUMBER_WORDS),
            units: map(UNITS),
            time_units: map(TIME_UNITS),
            scope: map(SCOPE),
            irregular: map(IRREGULAR),
            common: COMMON.iter().copied().collect(),
        }
    })
}

/// `t` as a number's canonical text (`1,000` = `1000`, `2nd` = `2`, `3.10`
/// kept apart from `3.1`: versions), or `None`.
fn number(t: &str) -> Option<String> {
    // Most tokens are words: no allocation for them.
    if !t.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = t
        .trim_end_matches(['%'])
        .trim_start_matches(['$', '€', '£', '¥']);
    let digits = t
        .strip_suffix("st")
        .or_else(|| t.strip_suffix("nd"))
        .or_else(|| t.strip_suffix("rd"))
        .or_else(|| t.strip_suffix("th"))
        .unwrap_or(t);
    let digits: String = digits.chars().filter(|&c| c != ',').collect();
    let mut seen_digit = false;
    for c in digits.chars() {
        match c {
            '0'..='9' => seen_digit = true,
            '.' | '-' | '+' => {}
            _ => return None,
        }
    }
    seen_digit.then_some(digits)
}

/// A token that looks like code: snake_case, dotted paths, `::`, paths,
/// calls, flags, camelCase.
fn is_identifier(t: &str) -> bool {
    let has_letter = t.chars().any(char::is_alphabetic);
    if !has_letter || t.len() < 2 {
        return false;
    }
    let camel = t
        .chars()
        .zip(t.chars().skip(1))
        .any(|(x, y)| x.is_lowercase() && y.is_uppercase());
    t.contains('_')
        || t.contains("::")
        || t.contains("()")
        || (t.contains('.') && !t.ends_with('.') && t.split('.').all(|p| !p.is_empty()))
        || (t.contains('/') && t.len() > 2)
        || t.starts_with('-')
        || camel
}

/// Splits on whitespace and strips the punctuation around each token (not
/// inside it: `os.path.join`, `km/h`, `don't` stay whole).
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .map(|t| {
            t.trim_matches(|c: char| {
                matches!(
                    c,
                    ',' | ';'
                        | ':'
                        | '!'
                        | '?'
                        | '('
                        | ')'
                        | '['
                        | ']'
                        | '{'
                        | '}'
                        | '"'
                        | '“'
                        | '”'
                        | '‘'
                        | '’'
                        | '`'
                        | '\''
                ) || (c == '.')
            })
        })
        .filter(|t| !t.is_empty())
}

/// The spans between matching quote marks.
fn quoted(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, close) in [('"', '"'), ('`', '`'), ('“', '”'), ('\'', '\'')] {
        let mut rest = text;
        while let Some(i) = rest.find(open) {
            // An apostrophe inside a word (don't) is not a quote.
            if open == '\'' {
                let before = rest[..i].chars().next_back();
                if before.is_some_and(char::is_alphanumeric) {
                    rest = &rest[i + open.len_utf8()..];
                    continue;
                }
            }
            let after = &rest[i + open.len_utf8()..];
            let Some(j) = after.find(close) else { break };
            let inner = &after[..j];
            if !inner.trim().is_empty() {
                out.push(inner.to_string());
            }
            rest = &after[j + close.len_utf8()..];
        }
    }
    out
}

impl Features {
    /// The heap memory these features hold, in bytes (for the cache's
    /// accounting).
    pub fn heap_bytes(&self) -> usize {
        let strings = |v: &[String]| v.iter().map(|s| s.capacity() + 24).sum::<usize>();
        strings(&self.numbers)
            + strings(&self.quoted)
            + strings(&self.names)
            + strings(&self.identifiers)
            + strings(&self.words)
            + self.units.capacity() * 16
            + self.scope.capacity() * 16
            + self.operators.capacity() * 4
            + self
                .pairs
                .iter()
                .map(|(a, b)| a.capacity() + b.capacity() + 48)
                .sum::<usize>()
            + self
                .sequence
                .iter()
                .map(|(w, b)| w.capacity() + b[0].capacity() + b[1].capacity() + 72)
                .sum::<usize>()
    }

    pub fn of(text: &str) -> Features {
        let mut f = Features {
            quoted: quoted(text),
            ..Features::default()
        };
        let toks: Vec<&str> = tokens(text).collect();
        // Which tokens start a sentence: their capital says nothing.
        let starts: Vec<bool> = {
            let raw: Vec<&str> = text.split_whitespace().collect();
            let mut out = Vec::with_capacity(toks.len());
            let mut start = true;
            for r in raw {
                if tokens(r).next().is_some() {
                    out.push(start);
                }
                start = r.ends_with(['.', '?', '!', ':']);
            }
            out
        };
        let lower: Vec<String> = toks.iter().map(|t| t.to_lowercase()).collect();
        for (i, (t, l)) in toks.iter().zip(&lower).enumerate() {
            if let Some(n) = number(t) {
                f.numbers.push(n);
                continue;
            }
            if let Some(n) = lookup(&index().number_words, l) {
                f.numbers.push(n.to_string());
                continue;
            }
            // A unit written against its number ("5km", "20°C").
            let unit_part = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
            if unit_part.len() < l.len() {
                f.numbers.push(l[..l.len() - unit_part.len()].to_string());
            }
            if let Some(u) =
                lookup(&index().units, unit_part).or_else(|| lookup(&index().time_units, unit_part))
            {
                // Single letters are units only after a number.
                let after_number = i > 0 && number(toks[i - 1]).is_some();
                if unit_part.len() > 1 || after_number || unit_part.len() < l.len() {
                    f.units.push(u);
                    continue;
                }
            }
            if NEGATIONS.contains(&l.as_str()) || l.ends_with("n't") {
                f.negations += 1;
            }
            if let Some(class) = lookup(&index().scope, l) {
                f.scope.push(class);
            }
            if is_identifier(t) {
                f.identifiers.push(t.to_string());
                continue;
            }
            let capitalised = t.chars().next().is_some_and(char::is_uppercase)
                && t.chars().skip(1).any(char::is_lowercase);
            let acronym = t.len() >= 2
                && t.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            let sentence_start = starts.get(i).copied().unwrap_or(i == 0);
            if ((capitalised && !sentence_start) || acronym)
                && !is_common(l)
                && lookup(&index().scope, l).is_none()
            {
                f.names.push(l.clone());
            }
        }
        // Direction: the nearest content words around each directional word.
        let content = |l: &String| {
            !is_common(l)
                && !DIRECTIONAL.contains(&l.as_str())
                && !NEGATIONS.contains(&l.as_str())
                && l.chars().any(char::is_alphanumeric)
        };
        for (i, l) in lower.iter().enumerate() {
            if !DIRECTIONAL.contains(&l.as_str()) {
                continue;
            }
            // "how to", "want to": an infinitive, not a direction.
            let infinitive =
                l == "to" && i > 0 && INFINITIVE_BEFORE.contains(&lower[i - 1].as_str());
            if infinitive {
                continue;
            }
            // Up to `DIRECTION_WINDOW` content words on each side: "Jupiter
            // larger than Saturn" relates Jupiter as well as "larger".
            let left = lower[..i]
                .iter()
                .rev()
                .filter(|w| content(w))
                .take(DIRECTION_WINDOW);
            for x in left {
                let right = lower[i + 1..]
                    .iter()
                    .filter(|w| content(w))
                    .take(DIRECTION_WINDOW);
                for y in right {
                    if x != y {
                        f.pairs.push((x.clone(), y.clone()));
                    }
                }
            }
        }
        f.operators = operators(text);
        let mut seq_tokens = Vec::new();
        for (i, l) in lower.iter().enumerate() {
            let skip = number(toks[i]).is_some()
                || lookup(&index().number_words, l).is_some()
                || lookup(&index().units, l).is_some()
                || lookup(&index().time_units, l).is_some();
            if content(l) && !skip {
                let at = |j: Option<usize>| j.map(|j| lower[j].clone()).unwrap_or_default();
                let before = [at(i.checked_sub(1)), at(i.checked_sub(2))];
                seq_tokens.push((stem(l), before));
            }
        }
        f.sequence = seq_tokens;
        f.words = lower;
        f.words.sort();
        f.words.dedup();
        f.units.sort_unstable();
        f.names.sort();
        f.names.dedup();
        f.identifiers.sort();
        f.identifiers.dedup();
        f.scope.sort_unstable();
        f
    }
}

/// Irregular verb forms and their stem, so that "taught" and "teach" are
/// one word to the order check.
const IRREGULAR: &[(&str, &str)] = &[
    ("taught", "teach"),
    ("thought", "think"),
    ("bought", "buy"),
    ("brought", "bring"),
    ("caught", "catch"),
    ("fought", "fight"),
    ("sought", "seek"),
    ("wrote", "write"),
    ("written", "write"),
    ("drove", "drive"),
    ("driven", "drive"),
    ("gave", "give"),
    ("given", "give"),
    ("took", "take"),
    ("taken", "take"),
    ("made", "make"),
    ("beaten", "beat"),
    ("won", "win"),
    ("lost", "lose"),
    ("led", "lead"),
    ("found", "find"),
    ("built", "build"),
    ("sent", "send"),
    ("told", "tell"),
    ("sold", "sell"),
    ("knew", "know"),
    ("known", "know"),
    ("saw", "see"),
    ("seen", "see"),
    ("ate", "eat"),
    ("eaten", "eat"),
    ("ran", "run"),
    ("began", "begin"),
    ("begun", "begin"),
    ("chose", "choose"),
    ("chosen", "choose"),
    ("went", "go"),
    ("gone", "go"),
    ("came", "come"),
    ("became", "become"),
    ("killed", "kill"),
    ("paid", "pay"),
    ("said", "say"),
    ("held", "hold"),
    ("met", "meet"),
    ("left", "leave"),
    ("fed", "feed"),
    ("hit", "hit"),
    ("struck", "strike"),
    ("followed", "follow"),
];

/// A crude stem: irregular forms, then a regular suffix (-ing, -ed, -es,
/// -s) off a word long enough to keep a stem of three letters.
fn stem(w: &str) -> String {
    if let Some(s) = lookup(&index().irregular, w) {
        return s.to_string();
    }
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(s) = w.strip_suffix(suffix) {
            if s.chars().count() >= 3 && !w.ends_with("ss") {
                return s.to_string();
            }
        }
    }
    w.to_string()
}

/// The operator signs of `text` in order: a sign between two letters
/// (`e-mail`, `km/h`, `and/or`) is part of a word, not an operator.
fn operators(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for (i, &c) in chars.iter().enumerate() {
        if !OPERATORS.contains(&c) {
            continue;
        }
        let prev = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let next = chars.get(i + 1).copied();
        let in_word =
            prev.is_some_and(char::is_alphabetic) && next.is_some_and(char::is_alphabetic);
        // A hyphen or slash joining words, or a trailing dash: prose.
        let prose = matches!(c, '-' | '/')
            && (in_word
                || prev.is_none_or(char::is_whitespace)
                    && next.is_none_or(char::is_whitespace)
                    && !chars[..i]
                        .iter()
                        .rev()
                        .find(|c| !c.is_whitespace())
                        .is_some_and(|c| c.is_ascii_digit() || *c == ')'));
        if !in_word && !prose {
            out.push(c);
        }
    }
    out
}

/// Whether the content words both prompts have once each come in the same
/// order, or in an order one gets from the other by moving a phrase that
/// can move (see [`anchored`]) to the other end.
fn order_agrees(a: &Features, b: &Features) -> bool {
    let once = |f: &Features, w: &str| f.sequence.iter().filter(|(x, _)| x == w).count() == 1;
    let shared = |x: &Features, y: &Features| -> Vec<String> {
        x.sequence
            .iter()
            .filter(|(w, _)| once(x, w) && once(y, w))
            .map(|(w, _)| w.clone())
            .collect()
    };
    let (sa, sb) = (shared(a, b), shared(b, a));
    let (wa, wb): (Vec<&str>, Vec<&str>) = (
        sa.iter().map(String::as_str).collect(),
        sb.iter().map(String::as_str).collect(),
    );
    if wa == wb {
        return true;
    }
    // A rotation: b = a[k..] + a[..k]. The phrase moved is a[..k] (to the
    // end) or a[k..] (to the front); it must be one that can move.
    (1..wa.len()).any(|k| {
        let rotated: Vec<&str> = wa[k..].iter().chain(&wa[..k]).copied().collect();
        rotated == wb
            && [wa[0], wa[k]]
                .iter()
                .any(|h| anchored(a, h) && anchored(b, h))
    })
}

/// Whether the content word `head` opens a phrase that can move as a
/// whole: the prompt starts with it, or a preposition or a question word
/// is among the two words before it ("in which country", "how many time
/// zones"). "Is every square a rectangle?" has no such phrase to move.
fn anchored(f: &Features, head: &str) -> bool {
    f.sequence
        .iter()
        .find(|(w, _)| w == head)
        .is_some_and(|(_, before)| {
            before[0].is_empty()
                || before.iter().any(|p| {
                    PREPOSITIONS.contains(&p.as_str()) || QUESTION_WORDS.contains(&p.as_str())
                })
        })
}

/// Whether every name is a word of the other prompt (`words` sorted).
fn names_agree(names: &[String], words: &[String]) -> bool {
    names.iter().all(|n| words.binary_search(n).is_ok())
}

/// Whether one list has a pair the other has the other way round.
fn reversed(a: &[(String, String)], b: &[(String, String)]) -> bool {
    a.iter()
        .any(|(x, y)| b.iter().any(|(p, q)| p == y && q == x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(a: &str, b: &str) {
        assert_eq!(
            compatible(a, b),
            Ok(()),
            "{a:?} / {b:?}: {:#?} {:#?}",
            Features::of(a),
            Features::of(b)
        );
    }

    fn fail(a: &str, b: &str, why: Mismatch) {
        assert_eq!(compatible(a, b), Err(why), "{a:?} / {b:?}");
    }

    #[test]
    fn paraphrases_pass() {
        pass(
            "How do I reverse a list in Python?",
            "In Python, how can I reverse a list?",
        );
        pass(
            "What is the capital of France?",
            "what's the capital city of France",
        );
        pass("Convert 5 km to miles", "How many miles is five km?");
        pass(
            "Could you explain what os.path.join does?",
            "Explain os.path.join please",
        );
        pass(
            "How do I convert a string to lowercase in Python?",
            "python: how to make a string lowercase?",
        );
        pass(
            "Which ocean lies between Africa and Australia?",
            "what ocean lies between africa and australia",
        );
    }

    #[test]
    fn the_guards_are_symmetric_on_the_whole_evaluation_set() {
        // The semantic cache asks them one way only.
        let set = include_str!("../../bench/cache-eval/pairs.jsonl");
        for line in set.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (a, b) = (v["a"].as_str().unwrap(), v["b"].as_str().unwrap());
            assert_eq!(
                compatible(a, b).is_ok(),
                compatible(b, a).is_ok(),
                "{a:?} / {b:?}"
            );
        }
    }

    #[test]
    fn swapped_words_numbers_operators_and_quotes_fail() {
        fail(
            "Is every square a rectangle?",
            "Is every rectangle a square?",
            Mismatch::Order,
        );
        fail(
            "Which philosopher taught Plato?",
            "Which philosopher did Plato teach?",
            Mismatch::Order,
        );
        fail(
            "In the 2022 World Cup final, did Argentina beat France?",
            "In the 2022 World Cup final, did France beat Argentina?",
            Mismatch::Order,
        );
        fail(
            "What is the remainder of 17 divided by 5?",
            "What is the remainder of 5 divided by 17?",
            Mismatch::Numbers,
        );
        fail(
            "How much is a 20% tip on a $45 bill?",
            "How much is a 20% tip on a $54 bill?",
            Mismatch::Numbers,
        );
        fail(
            "Compute (10 - 4) * 2.",
            "Compute 10 - (4 * 2).",
            Mismatch::Operators,
        );
        fail(
            "In ASCII sorting, does \"apple\" come before \"Apple\"?",
            "In ASCII sorting, does \"Apple\" come before \"apple\"?",
            Mismatch::Quoted,
        );
        fail(
            "What vaccines are required for travel to Kenya?",
            "What vaccines are recommended for travel to Kenya?",
            Mismatch::Scope,
        );
        // A phrase moved to the other end, led by its preposition, is the
        // same question; prose dashes and word-joining slashes are not
        // operators.
        pass(
            "On Linux, how do I list open ports?",
            "How do I list open ports on Linux?",
        );
        pass(
            "Is an e-mail address case-sensitive?",
            "is an e-mail address case-sensitive",
        );
        pass("What is 10 - 4?", "what's 10 - 4");
    }

    #[test]
    fn near_misses_fail_on_what_changed() {
        fail(
            "What is the capital of France?",
            "What is the capital of Germany?",
            Mismatch::Names,
        );
        fail(
            "Give me 3 apple recipes",
            "Give me 4 apple recipes",
            Mismatch::Numbers,
        );
        fail(
            "Top five films of 1999",
            "Top ten films of 1999",
            Mismatch::Numbers,
        );
        fail(
            "Convert 5 km to miles",
            "Convert 5 km to yards",
            Mismatch::Units,
        );
        fail(
            "How do I convert a string to an int?",
            "How do I convert an int to a string?",
            Mismatch::Direction,
        );
        fail(
            "Which foods contain gluten?",
            "Which foods do not contain gluten?",
            Mismatch::Negation,
        );
        fail(
            "List all prime numbers below 20",
            "List the first prime number below 20",
            Mismatch::Scope,
        );
        fail(
            "What does `git reset --hard` do?",
            "What does `git reset --soft` do?",
            Mismatch::Quoted,
        );
        fail(
            "What does os.path.join do?",
            "What does os.path.split do?",
            Mismatch::Identifiers,
        );
        fail(
            "Say hello in Spanish",
            "Say hello in Portuguese",
            Mismatch::Names,
        );
        fail(
            "Sort the list then deduplicate it",
            "Deduplicate the list then sort it",
            Mismatch::Direction,
        );
        fail("Is 20°C warm?", "Is 20°F warm?", Mismatch::Units);
        fail(
            "How much do I earn per day at $20/hour?",
            "How much do I earn per week at $20/hour?",
            Mismatch::Units,
        );
    }

    #[test]
    fn nothing_panics_on_odd_text() {
        for t in [
            "",
            " ",
            "''",
            "\"unclosed",
            "`a` `",
            "ééé",
            "-",
            "...",
            "a->",
            "don't'",
            "1,2,,3",
        ] {
            let _ = Features::of(t);
            let _ = compatible(t, "x");
        }
    }
}
