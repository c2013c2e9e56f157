//! EC2's Query protocol on the way out: `<ActionResponse>` documents and `<Response><Errors>` bodies, written
//! with quick-xml (which escapes the text).

use std::collections::BTreeMap;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// The namespace of every EC2 response (API version 2016-11-15).
pub const EC2_NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An XML document being written, element by element.
pub struct Xml {
    w: Writer<Vec<u8>>,
}

impl Xml {
    fn event(&mut self, e: Event<'_>) {
        // Writing into a Vec cannot fail.
        let _ = self.w.write_event(e);
    }

    fn new() -> Xml {
        let mut x = Xml {
            w: Writer::new(Vec::new()),
        };
        x.event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
        x
    }

    /// `<{action}Response xmlns=...><requestId>..</requestId>`: the rest is the caller's; `finish` closes it.
    pub fn response(action: &str, request_id: &str) -> Xml {
        let mut x = Xml::new();
        let tag = format!("{action}Response");
        x.event(Event::Start(
            BytesStart::new(tag).with_attributes([("xmlns", EC2_NAMESPACE)]),
        ));
        x.leaf("requestId", request_id);
        x
    }

    /// EC2's error body.
    pub fn error(code: &str, message: &str, request_id: &str) -> Vec<u8> {
        let mut x = Xml::new();
        x.open("Response");
        x.open("Errors");
        x.open("Error");
        x.leaf("Code", code);
        x.leaf("Message", message);
        x.close("Error");
        x.close("Errors");
        x.leaf("RequestID", request_id);
        x.close("Response");
        x.w.into_inner()
    }

    pub fn open(&mut self, tag: &str) {
        self.event(Event::Start(BytesStart::new(tag)));
    }

    pub fn close(&mut self, tag: &str) {
        self.event(Event::End(BytesEnd::new(tag)));
    }

    pub fn leaf(&mut self, tag: &str, text: impl std::fmt::Display) {
        self.open(tag);
        let text = text.to_string();
        self.event(Event::Text(BytesText::new(&text)));
        self.close(tag);
    }

    /// A leaf only when there is a value.
    pub fn opt(&mut self, tag: &str, text: Option<impl std::fmt::Display>) {
        if let Some(t) = text {
            self.leaf(tag, t);
        }
    }

    /// A leaf only when the text is not empty.
    pub fn nonempty(&mut self, tag: &str, text: &str) {
        if !text.is_empty() {
            self.leaf(tag, text);
        }
    }

    /// `<tag><item>v</item>...</tag>`.
    pub fn items<I, S>(&mut self, tag: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: std::fmt::Display,
    {
        self.open(tag);
        for v in values {
            self.leaf("item", v);
        }
        self.close(tag);
    }

    /// `<tagSet><item><key/><value/></item>...</tagSet>`.
    pub fn tags(&mut self, tags: &BTreeMap<String, String>) {
        self.open("tagSet");
        for (k, v) in tags {
            self.open("item");
            self.leaf("key", k);
            self.leaf("value", v);
            self.close("item");
        }
        self.close("tagSet");
    }

    /// Close the response element and hand back the bytes.
    pub fn finish(mut self, action: &str) -> Vec<u8> {
        self.close(&format!("{action}Response"));
        self.w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_response_is_closed() {
        let mut x = Xml::response("CreateTags", "req-1");
        x.leaf("return", "a<b & \"c\"");
        let s = String::from_utf8(x.finish("CreateTags")).unwrap();
        assert!(s.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
        assert!(
            s.contains("<CreateTagsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">")
        );
        assert!(s.contains("<return>a&lt;b &amp; &quot;c&quot;</return>"));
        assert!(s.ends_with("</CreateTagsResponse>"));
    }

    #[test]
    fn errors_have_ec2s_shape() {
        let s = String::from_utf8(Xml::error("InvalidInstanceID.NotFound", "gone", "r")).unwrap();
        assert!(s.contains("<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>gone</Message></Error></Errors><RequestID>r</RequestID></Response>"));
    }
}
