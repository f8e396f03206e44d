//! Typed access to a built-in's named JSON inputs, with fatal errors naming the input.

use crate::task::TaskError;
use serde_json::{Map, Value};

/// A short English name of a JSON value's type, for error messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The inputs object of one built-in call.
pub(crate) struct Inputs {
    function: &'static str,
    map: Map<String, Value>,
}

impl Inputs {
    /// Checks that `inputs` is an object (null counts as no inputs).
    pub(crate) fn new(function: &'static str, inputs: Value) -> Result<Self, TaskError> {
        match inputs {
            Value::Object(map) => Ok(Inputs { function, map }),
            Value::Null => Ok(Inputs {
                function,
                map: Map::new(),
            }),
            other => Err(TaskError::fatal(format!(
                "{function}: inputs must be an object of named inputs, got {}",
                kind_of(&other)
            ))),
        }
    }

    /// A fatal error about input `name`.
    pub(crate) fn error(&self, name: &str, message: impl std::fmt::Display) -> TaskError {
        TaskError::fatal(format!("{}: input `{name}` {message}", self.function))
    }

    fn type_error(&self, name: &str, expected: &str, got: &Value) -> TaskError {
        self.error(name, format!("must be {expected}, got {}", kind_of(got)))
    }

    /// The input's value; an explicit null counts as absent.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// Takes the input's value out (null if absent).
    pub(crate) fn take(&mut self, name: &str) -> Value {
        self.map.remove(name).unwrap_or(Value::Null)
    }

    fn missing(&self, name: &str, expected: &str) -> TaskError {
        self.error(name, format!("is required ({expected})"))
    }

    /// An optional finite number.
    pub(crate) fn opt_f64(&self, name: &str) -> Result<Option<f64>, TaskError> {
        match self.get(name) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.type_error(name, "a finite number", v)),
            },
            Some(v) => Err(self.type_error(name, "a number", v)),
        }
    }

    /// A required finite number.
    pub(crate) fn f64(&self, name: &str) -> Result<f64, TaskError> {
        self.opt_f64(name)?
            .ok_or_else(|| self.missing(name, "a number"))
    }

    /// An optional non-negative integer; a float with an integral value is accepted.
    pub(crate) fn opt_u64(&self, name: &str) -> Result<Option<u64>, TaskError> {
        const EXPECTED: &str = "a non-negative integer";
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let Value::Number(n) = v else {
            return Err(self.type_error(name, EXPECTED, v));
        };
        if let Some(u) = n.as_u64() {
            return Ok(Some(u));
        }
        if let Some(i) = n.as_i64() {
            return Err(self.error(name, format!("must be {EXPECTED}, got {i}")));
        }
        match n.as_f64() {
            // 2^64 is exactly representable; every integral f64 below it fits a u64.
            Some(x) if x.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&x) => {
                Ok(Some(x as u64))
            }
            _ => Err(self.error(name, format!("must be {EXPECTED}, got {n}"))),
        }
    }

    /// An optional non-negative integer no larger than `max`.
    pub(crate) fn opt_usize(&self, name: &str, max: usize) -> Result<Option<usize>, TaskError> {
        match self.opt_u64(name)? {
            None => Ok(None),
            Some(u) => match usize::try_from(u) {
                Ok(v) if v <= max => Ok(Some(v)),
                _ => Err(self.error(name, format!("must be at most {max}, got {u}"))),
            },
        }
    }

    /// A required non-negative integer no larger than `max`.
    pub(crate) fn usize(&self, name: &str, max: usize) -> Result<usize, TaskError> {
        self.opt_usize(name, max)?
            .ok_or_else(|| self.missing(name, "a non-negative integer"))
    }

    /// An optional string.
    pub(crate) fn opt_str(&self, name: &str) -> Result<Option<&str>, TaskError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(name, "a string", v)),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(&self, name: &str) -> Result<Option<bool>, TaskError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(name, "a boolean", v)),
        }
    }

    /// An optional list.
    pub(crate) fn opt_list(&self, name: &str) -> Result<Option<&[Value]>, TaskError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.type_error(name, "a list", v)),
        }
    }

    /// A required location: a URI string, or an object with a string `uri` (a result ref).
    pub(crate) fn location(&self, name: &str) -> Result<String, TaskError> {
        match self.get(name) {
            None => Err(self.missing(name, "a location string")),
            Some(v) => self.location_value(name, v),
        }
    }

    /// One location inside input `name`.
    pub(crate) fn location_value(&self, name: &str, v: &Value) -> Result<String, TaskError> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.error(name, "must be a location, got an empty string")),
            Value::Object(o) => match o.get("uri") {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(self.type_error(name, "a location string", v)),
            },
            _ => Err(self.type_error(name, "a location string", v)),
        }
    }
}
