//! A reader for Python pickles (protocols 0–5) that never runs code.
//!
//! Pickles are programs for a small stack machine. This one executes the
//! data-building instructions and records every "call" (REDUCE, NEWOBJ,
//! BUILD) as an [`Object`] naming its callable, arguments and state, which
//! the caller interprets: a NumPy array, a SciPy sparse matrix, a chumpy
//! object. Only two calls are evaluated, because Python 3 needs them to read
//! Python-2 byte strings: `_codecs.encode(text, "latin1")` and `bytes()`.

use std::cell::RefCell;
use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
#[error("pickle at byte {offset}: {reason}")]
pub struct PickleError {
    pub offset: usize,
    pub reason: String,
}

pub type Shared<T> = Rc<RefCell<T>>;

#[derive(Debug, Clone, Default)]
pub enum Value {
    #[default]
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A Python-3 `str` (or Python-2 `unicode`).
    Str(Rc<str>),
    /// A Python-3 `bytes` or a Python-2 `str` (read as Latin-1 by Python 3).
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Shared<Vec<Value>>),
    Dict(Shared<Vec<(Value, Value)>>),
    /// `module.name`, not resolved.
    Global {
        module: String,
        name: String,
    },
    Object(Shared<Object>),
    /// A persistent id (BINPERSID): a reference the writer resolves
    /// outside the pickle, like a PyTorch tensor storage.
    Persistent(Rc<Value>),
    /// The MARK instruction's stack marker; never in a finished value.
    Mark,
}

// Every variant holding data is reference-counted, as Python's objects are:
// DUP and memo GET share a value, so a pickle cannot grow exponentially by
// copying (DUP, TUPLE2, DUP, TUPLE2, ... would otherwise double each time).

/// Drops nested values without recursion: a pickle nests a value one level
/// deeper per instruction byte, deeper than any thread's stack.
impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut v) = pending.pop() {
            v.take_children(&mut pending);
        }
    }
}

impl Value {
    /// Moves the children this value alone owns into `out`.
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(t) => {
                if let Some(items) = Rc::get_mut(t) {
                    out.extend(items.iter_mut().map(std::mem::take));
                }
            }
            Value::List(l) => {
                if let Some(l) = Rc::get_mut(l) {
                    out.append(l.get_mut());
                }
            }
            Value::Dict(d) => {
                if let Some(d) = Rc::get_mut(d) {
                    for (k, v) in d.get_mut().drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                }
            }
            Value::Object(o) => {
                if let Some(o) = Rc::get_mut(o) {
                    let o = o.get_mut();
                    out.push(std::mem::take(&mut o.callable));
                    out.append(&mut o.args);
                    out.extend(o.state.take());
                }
            }
            Value::Persistent(p) => {
                if let Some(p) = Rc::get_mut(p) {
                    out.push(std::mem::take(p));
                }
            }
            _ => {}
        }
    }
}

/// A recorded call: `callable(*args)`, then `__setstate__(state)`.
#[derive(Debug, Clone)]
pub struct Object {
    pub callable: Value,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

impl Value {
    /// Text of a `str`, or of a Python-2 byte string read as Latin-1.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The items of a tuple or a list.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// `dict[key]` for a text key.
    pub fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        let d = d.borrow();
        d.iter()
            .find(|(k, _)| k.as_text().as_deref() == Some(key))
            .map(|(_, v)| v.clone())
    }

    /// The `(module, name)` of a global, or of the class an object was made from.
    pub fn class_name(&self) -> Option<(String, String)> {
        // A loop, not recursion: calls may nest as deep as the pickle is long.
        let mut v = self.clone();
        loop {
            let next = match &v {
                Value::Global { module, name } => return Some((module.clone(), name.clone())),
                Value::Object(o) => {
                    let o = o.borrow();
                    match &o.callable {
                        // copyreg.__newobj__ / _reconstruct: the class is the first argument.
                        Value::Global { name, .. }
                            if name == "_reconstruct" || name == "_reconstructor" =>
                        {
                            o.args.first()?.clone()
                        }
                        c => c.clone(),
                    }
                }
                _ => return None,
            };
            v = next;
        }
    }
}

/// Runs the pickle in `bytes` and returns the value it leaves.
pub fn load(bytes: &[u8]) -> Result<Value, PickleError> {
    Machine {
        input: bytes,
        pos: 0,
        stack: Vec::new(),
        memo: std::collections::HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: std::collections::HashMap<u64, Value>,
}

impl Machine<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if self.input.len() - self.pos < n {
            return self.fail("truncated");
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.input[self.pos..];
        let Some(end) = rest.iter().position(|&c| c == b'\n') else {
            return self.fail("unterminated line");
        };
        let text: String = rest[..end].iter().map(|&c| c as char).collect();
        self.pos += end + 1;
        Ok(text)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Value::Mark) | None => self.fail("stack underflow"),
            Some(v) => Ok(v),
        }
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        match self.stack.last() {
            Some(Value::Mark) | None => self.fail("stack underflow"),
            Some(_) => Ok(self.stack.last_mut().expect("checked")),
        }
    }

    /// The values pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.stack.iter().rposition(|v| matches!(v, Value::Mark)) else {
            return self.fail("no MARK on the stack");
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn sized(&mut self, len_bytes: usize) -> Result<&[u8], PickleError> {
        let n = usize::try_from(self.uint(len_bytes)?).unwrap_or(usize::MAX);
        self.take(n)
    }

    fn bytes(&mut self, len_bytes: usize) -> Result<Value, PickleError> {
        Ok(Value::Bytes(self.sized(len_bytes)?.into()))
    }

    fn text(&mut self, len_bytes: usize) -> Result<Value, PickleError> {
        match std::str::from_utf8(self.sized(len_bytes)?) {
            Ok(s) => Ok(Value::Str(s.into())),
            Err(_) => self.fail("invalid UTF-8 in a unicode string"),
        }
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(v) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            None => self.fail(format!("memo key {key} was never stored")),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<Value>) -> Result<(), PickleError> {
        if pairs.len() % 2 != 0 {
            return self.fail("odd number of dict items");
        }
        let d = match self.top()? {
            Value::Dict(d) => Rc::clone(d),
            _ => return self.fail("SETITEM(S) on a non-dict"),
        };
        let mut d = d.borrow_mut();
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn call(&mut self, callable: Value, args: Vec<Value>) -> Value {
        if let Value::Global { module, name } = &callable {
            match (module.as_str(), name.as_str(), args.as_slice()) {
                ("_codecs", "encode", [Value::Str(s), ..]) => {
                    // Python 3 writes bytes at protocol < 3 as their Latin-1 text.
                    return Value::Bytes(s.chars().map(|c| c as u32 as u8).collect());
                }
                ("builtins" | "__builtin__", "bytes", []) => return Value::Bytes(Rc::new([])),
                // A dict subclass that carries only data (state dicts).
                ("collections", "OrderedDict", []) => return Value::Dict(Rc::default()),
                _ => {}
            }
        }
        Value::Object(Rc::new(RefCell::new(Object {
            callable,
            args,
            state: None,
        })))
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    // PROTO
                    let v = self.uint(1)?;
                    if v > 5 {
                        return self.fail(format!("unsupported protocol {v}"));
                    }
                }
                0x95 => {
                    // FRAME: a length prefix, nothing to do.
                    self.uint(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => match s.parse() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.fail(format!("bad INT {s:?}")),
                        },
                    };
                    self.stack.push(v);
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'L' => {
                    let l = self.line()?;
                    match l.trim_end_matches('L').parse() {
                        Ok(i) => self.stack.push(Value::Int(i)),
                        Err(_) => return self.fail(format!("LONG {l:?} does not fit 64 bits")),
                    }
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement.
                    let n = self.uint(if op == 0x8a { 1 } else { 4 })? as usize;
                    if n > 8 {
                        return self.fail("integer wider than 64 bits");
                    }
                    let b = self.take(n)?;
                    let mut v = b.iter().rev().fold(0i64, |acc, &x| (acc << 8) | x as i64);
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'F' => {
                    let l = self.line()?;
                    match l.parse() {
                        Ok(f) => self.stack.push(Value::Float(f)),
                        Err(_) => return self.fail(format!("bad FLOAT {l:?}")),
                    }
                }
                b'G' => {
                    let b = self.take(8)?;
                    let f = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(f));
                }
                b'S' => {
                    let l = self.line()?;
                    let v = unquote(&l)
                        .ok_or(())
                        .or_else(|_| self.fail(format!("bad STRING {l:?}")))?;
                    self.stack.push(Value::Bytes(v.into()));
                }
                b'T' | b'B' => {
                    let v = self.bytes(4)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    let v = self.bytes(1)?;
                    self.stack.push(v);
                }
                0x8e | 0x96 => {
                    let v = self.bytes(8)?;
                    self.stack.push(v);
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack.push(Value::Str(l.into()));
                }
                b'X' => {
                    let v = self.text(4)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let v = self.text(1)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let v = self.text(8)?;
                    self.stack.push(v);
                }
                b')' => self.stack.push(Value::Tuple(Rc::new([]))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.fail("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.iter().any(|v| matches!(v, Value::Mark)) {
                        return self.fail("MARK inside a tuple");
                    }
                    self.stack.push(Value::Tuple(items.into()));
                }
                b']' => self.stack.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let l = match self.top()? {
                        Value::List(l) => Rc::clone(l),
                        _ => return self.fail("APPEND(S) on a non-list"),
                    };
                    l.borrow_mut().extend(items);
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::default()));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                0x8f => self.stack.push(Value::List(Rc::default())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let l = match self.top()? {
                        Value::List(l) => Rc::clone(l),
                        _ => return self.fail("ADDITEMS on a non-set"),
                    };
                    l.borrow_mut().extend(items);
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items.into()));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?.as_text();
                    let module = self.pop()?.as_text();
                    let (Some(module), Some(name)) = (module, name) else {
                        return self.fail("STACK_GLOBAL needs two strings");
                    };
                    self.stack.push(Value::Global { module, name });
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Some(args) = args.items() else {
                        return self.fail("REDUCE arguments are not a tuple");
                    };
                    let v = self.call(callable, args);
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?.items().unwrap_or_default();
                    let cls = self.pop()?;
                    let v = self.call(cls, args);
                    self.stack.push(v);
                }
                0x92 => {
                    // NEWOBJ_EX: keyword arguments are dropped (none of our
                    // formats use them).
                    self.pop()?;
                    let args = self.pop()?.items().unwrap_or_default();
                    let cls = self.pop()?;
                    let v = self.call(cls, args);
                    self.stack.push(v);
                }
                b'i' => {
                    // INST (protocol 0): class from the two lines, args from MARK.
                    let module = self.line()?;
                    let name = self.line()?;
                    let args = self.pop_mark()?;
                    let v = self.call(Value::Global { module, name }, args);
                    self.stack.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.fail("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let v = self.call(cls, items);
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Object(o) => o.borrow_mut().state = Some(state),
                        // An OrderedDict's attributes (a state dict's
                        // `_metadata`): not part of its items.
                        Value::Dict(_) => {}
                        _ => return self.fail("BUILD on a value that is not an object"),
                    }
                }
                b'p' => {
                    let l = self.line()?;
                    let Ok(k) = l.parse() else {
                        return self.fail("bad PUT key");
                    };
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.uint(1)?;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line()?;
                    let Ok(k) = l.parse() else {
                        return self.fail("bad GET key");
                    };
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.uint(1)?;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                0x98 => {} // READONLY_BUFFER
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Persistent(Rc::new(pid)));
                }
                b'P' | 0x82..=0x84 | 0x97 => {
                    return self.fail(format!(
                        "instruction 0x{op:02x} needs the writer's runtime (persistent ids, extension registry or out-of-band buffers)"
                    ));
                }
                _ => return self.fail(format!("unknown instruction 0x{op:02x}")),
            }
        }
    }
}

/// A Python `repr` of a byte string, as protocol 0's STRING writes it.
fn unquote(s: &str) -> Option<Vec<u8>> {
    let q = s.chars().next()?;
    if !(q == '\'' || q == '"') || !s.ends_with(q) || s.len() < 2 {
        return None;
    }
    let body = &s[1..s.len() - 1];
    let mut out = Vec::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c as u32 as u8);
            continue;
        }
        match chars.next()? {
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            c => out.push(c as u32 as u8),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_containers_memo_and_python2_strings() {
        // pickle.dumps({'a': [1, -2, 300], 'b': (1.5, None, True)}, protocol=2)
        // with 'a' and 'b' written as Python-2 byte strings (SHORT_BINSTRING),
        // and 'c' the same list object as 'a' (a memo reference).
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend_from_slice(&[b'U', 1, b'a', b']', b'q', 1, b'(', b'K', 1]);
        p.extend_from_slice(&[b'J', 0xfe, 0xff, 0xff, 0xff, b'M', 0x2c, 0x01, b'e']);
        p.extend_from_slice(&[b'U', 1, b'b', b'G']);
        p.extend_from_slice(&1.5f64.to_be_bytes());
        p.extend_from_slice(&[b'N', 0x88, 0x87, b'U', 1, b'c', b'h', 1, b'u', b'.']);
        let v = load(&p).unwrap();
        let a: Vec<i64> = v
            .get("a")
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .map(|x| x.as_int().unwrap())
            .collect();
        assert_eq!(a, [1, -2, 300]);
        let b = v.get("b").unwrap().items().unwrap();
        assert!(matches!(b[0], Value::Float(f) if f == 1.5));
        assert!(matches!(b[1], Value::None));
        assert!(matches!(b[2], Value::Bool(true)));
        // 'c' is the memoised list, seen after APPENDS filled it.
        assert_eq!(v.get("c").unwrap().items().unwrap().len(), 3);
    }

    #[test]
    fn long1_is_twos_complement() {
        // LONG1 of -129 is two bytes 0x7f 0xff; 2**40 is 6 bytes.
        let v = load(&[0x8a, 2, 0x7f, 0xff, b'.']).unwrap();
        assert_eq!(v.as_int(), Some(-129));
        let v = load(&[0x8a, 6, 0, 0, 0, 0, 0, 1, b'.']).unwrap();
        assert_eq!(v.as_int(), Some(1 << 40));
    }

    #[test]
    fn codecs_encode_gives_bytes_and_other_calls_are_recorded() {
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"_codecs\nencode\n");
        p.extend_from_slice(&[b'X', 2, 0, 0, 0, 0xc3, 0xbf, b'X', 6, 0, 0, 0]);
        p.extend_from_slice(b"latin1");
        p.extend_from_slice(&[0x86, b'R', b'.']);
        let v = load(&p).unwrap();
        assert!(matches!(v, Value::Bytes(ref b) if **b == [0xff]));

        let mut p = b"cos\nsystem\n(S'echo hi'\ntR.".to_vec();
        p.insert(0, b'(');
        p.insert(1, b'1');
        let v = load(&p).unwrap();
        let Value::Object(ref o) = v else { panic!() };
        assert_eq!(o.borrow().callable.class_name().unwrap().1, "system");
    }

    #[test]
    fn truncated_input_is_an_error_with_its_offset() {
        let e = load(&[0x80, 2, b'T', 10, 0, 0, 0, b'x']).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
