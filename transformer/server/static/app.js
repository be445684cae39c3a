// The page of `transformer serve`: search over pasted sentences (encoders, /v1/embeddings),
// translate (encoder-decoders, /translate), generate with streaming (decoders,
// /v1/completions with stream: server-sent events read from fetch's body).
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value;
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function post(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error((data.error && (data.error.message || data.error)) || r.statusText);
  return data;
}

function show(text, error) {
  $("output").textContent = text;
  $("output").className = error ? "error" : "";
}

async function search() {
  const sentences = $("input").value.split("\n").filter((s) => s.trim());
  const data = await post("/v1/embeddings", { model: info.model_id, input: [$("query").value, ...sentences] });
  const vectors = data.data.map((d) => d.embedding);
  const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
  const norm = (a) => Math.sqrt(dot(a, a)) || 1;
  const q = vectors[0];
  const ranked = sentences.map((s, i) => ({ s, score: dot(q, vectors[i + 1]) / (norm(q) * norm(vectors[i + 1])) }))
    .sort((a, b) => b.score - a.score);
  $("results").replaceChildren(...ranked.map(({ s, score }) => {
    const li = document.createElement("li");
    const span = document.createElement("span");
    span.className = "score";
    span.textContent = score.toFixed(4);
    li.append(span, s);
    return li;
  }));
  show("");
}

async function translate() {
  const q = $("source").value.split("\n");
  const data = await post("/translate", { q, source: info.source_lang || "auto", target: info.target_lang || "auto" });
  show(data.translatedText.join("\n"));
}

async function generate() {
  show("");
  const body = { model: info.model_id, prompt: $("prompt").value, stream: true,
    max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value) };
  const r = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!r.ok) {
    const data = await r.json();
    throw new Error(data.error ? data.error.message : r.statusText);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") { $("output").dataset.done = "1"; return; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const c of chunk.choices) $("output").textContent += c.text;
    }
  }
}

async function run() {
  $("run").disabled = true;
  delete $("output").dataset.done;
  try {
    if (info.model_type === "encoder") await search();
    else if (info.model_type === "seq2seq") await translate();
    else await generate();
  } catch (e) {
    show(String(e.message || e), true);
  } finally {
    $("run").disabled = false;
  }
}

async function start() {
  info = await (await fetch("/info")).json();
  $("model").textContent = info.model_id;
  $("kind").textContent = "(" + info.model_type + ")";
  $(info.model_type).hidden = false;
  $("key-box").hidden = !info.api_key_required;
  $("hint").textContent = { encoder: "Ranks the sentences by cosine similarity to the query.",
    seq2seq: "Translates each line" + (info.source_lang ? ` (${info.source_lang} → ${info.target_lang})` : "") + ".",
    decoder: "Continues the prompt; the text streams as it is generated." }[info.model_type];
  $("run").textContent = { encoder: "Search", seq2seq: "Translate", decoder: "Generate" }[info.model_type];
  $("run").disabled = false;
  $("run").addEventListener("click", run);
}
start();
