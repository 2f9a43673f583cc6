package events

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Headers of a signed request.
const (
	// TimestampHeader carries the Unix time (seconds) of the attempt,
	// which the signature covers: a receiver refuses old ones (replay).
	TimestampHeader = "X-Gatehouse-Timestamp"
	// SignatureHeader is "sha256=" and the hex HMAC-SHA256, under the
	// webhook's secret, of the timestamp, ".", and the body's bytes.
	SignatureHeader = "X-Gatehouse-Signature"
)

// CloudEventContentType is the media type of structured-mode CloudEvents
// in JSON (CloudEvents 1.0 JSON format, section 3.1).
const CloudEventContentType = "application/cloudevents+json"

// CloudEvent is a CloudEvents 1.0 event in structured content mode.
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	// Repeats is an extension attribute: how many of the same event the
	// webhook's repeatWindow left out since the previous one was sent.
	// Absent when none were.
	Repeats int `json:"repeats,omitempty"`
}

// encodeCloudEvent is e as a CloudEvent from source, with a new id (the
// same for every attempt of one delivery, so that a receiver can tell a
// retry from a new event).
func encodeCloudEvent(e Event, source string) ([]byte, error) {
	data, err := json.Marshal(e.Data)
	if err != nil {
		return nil, err
	}
	return json.Marshal(CloudEvent{SpecVersion: "1.0", ID: newID(), Source: source, Type: e.Type, Subject: e.Subject,
		Time: e.Time.UTC().Format(time.RFC3339Nano), DataContentType: "application/json", Data: data, Repeats: e.repeats})
}

// encodeSlack is e as Slack's incoming-webhook message: {"text": ...}.
func encodeSlack(e Event) ([]byte, error) {
	text := e.Message
	if text == "" {
		text = e.Type + ": " + e.Subject
	}
	text = ":warning: " + chatText(text)
	if e.repeats > 0 {
		text += " (" + strconv.Itoa(e.repeats) + " more like it not sent since the previous notice)"
	}
	return json.Marshal(struct {
		Text string `json:"text"`
	}{text})
}

// chatText is s as one code span of chat markup. An image's package names
// and messages come from whoever pushed it and must not become a link, an
// image, a mention or formatting: Slack's mrkdwn reads <…> as links and
// mentions (escaped to entities, which Slack requires even in code);
// Mattermost and Rocket.Chat read Markdown ([x](url), ![x](url),
// @channel), which a code span shows as written. A backtick would end
// the span and a blank line the paragraph: backticks become quotes and
// control characters (line breaks) spaces.
func chatText(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '`':
			return '\''
		case unicode.IsControl(r):
			return ' '
		}
		return r
	}, s)
	return "`" + slackEscape.Replace(s) + "`"
}

// slackEscape escapes what Slack's mrkdwn reads as markup (<!channel>,
// <https://…|text>), as Slack asks of every message.
var slackEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

// newID is a random UUID (version 4).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Sign is the SignatureHeader value of body sent at timestamp (Unix
// seconds, as written in TimestampHeader) under key.
func Sign(key []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Errors of Verify.
var (
	ErrBadSignature = errors.New("events: signature does not match")
	ErrOldTimestamp = errors.New("events: timestamp missing or outside the allowed skew")
)

// Verify checks a received request as a receiver should: the signature
// header against the timestamp header and the exact body bytes, in
// constant time, and the timestamp within maxSkew of now.
func Verify(key []byte, timestamp, signature string, body []byte, now time.Time, maxSkew time.Duration) error {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return ErrOldTimestamp
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return ErrOldTimestamp
	}
	want := Sign(key, timestamp, body)
	if !strings.HasPrefix(signature, "sha256=") || !hmac.Equal([]byte(signature), []byte(want)) {
		return ErrBadSignature
	}
	return nil
}
