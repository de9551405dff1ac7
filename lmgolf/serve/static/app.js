// The chat page: streams /v1/completions with echo and logprobs, and colours every token by its bits.
"use strict";

const $ = (id) => document.getElementById(id);
const LN2 = Math.log(2);
let scaleBits = 12;   // bits at the red end of the colour scale (set from the vocabulary size)
let controller = null;

function colour(bits) {
  const x = Math.min(Math.max(bits / scaleBits, 0), 1);
  return `hsl(${140 - 140 * x}, ${65 + 15 * x}%, ${84 - 8 * x}%)`;
}

function fmt(n) { return n == null ? "—" : Number(n).toLocaleString("en-US"); }

async function loadCard() {
  const card = await (await fetch("/v1/card")).json();
  $("model-name").textContent = card.name;
  scaleBits = Math.max(4, Math.min(16, Math.ceil(Math.log2(card.shape.vocab_size))));
  $("legend-max").textContent = `${scaleBits}+ bits`;
  const data = card.training_data || {};
  const rows = [
    ["parameters", fmt(card.parameters)], ["artifact bytes", fmt(card.artifact_bytes)],
    ["val bpb", card.val_bpb == null ? "—" : card.val_bpb.toFixed(4)], ["preset", card.preset || "—"],
    ["training data", data.corpus ? `${data.corpus} (${fmt(data.train_tokens)} tokens)` : "—"],
    ["trained tokens", fmt(card.trained_tokens)], ["tokenizer", card.tokenizer || "—"],
    ["shape", `${card.shape.n_layer} layers × ${card.shape.d_model}, context ${card.shape.context}`],
    ["served from", `${card.kind}: ${card.path}`],
  ];
  const body = $("card").querySelector("tbody");
  for (const [k, v] of rows) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<th></th><td></td>";
    tr.children[0].textContent = k;
    tr.children[1].textContent = v;
    body.appendChild(tr);
  }
  $("max-tokens").max = card.limits.max_new_tokens;
}

// one span per token; a token whose text is empty (part of a UTF-8 character) adds its bits to the next one
let carried = null;
function addToken(text, logprob, top, kind) {
  const bits = logprob == null ? null : -logprob / LN2;
  if (text === "") {
    if (bits != null) carried = { bits: (carried ? carried.bits : 0) + bits, n: (carried ? carried.n : 0) + 1 };
    return;
  }
  let total = bits, n = 1;
  if (carried) { total = (total || 0) + carried.bits; n += carried.n; carried = null; }
  const span = document.createElement("span");
  span.className = `tok ${kind}` + (total == null ? " unscored" : "");
  span.textContent = text;
  if (total != null) {
    span.style.background = colour(total);
    span.dataset.bits = total.toFixed(2);
  }
  const what = total == null ? "not scored (nothing before it in the window)" : `${total.toFixed(2)} bits` + (n > 1 ? ` over ${n} tokens` : "");
  span.title = `${JSON.stringify(text)}: ${what}`;
  span.addEventListener("mouseenter", () => inspect(text, what, top, kind));
  $("output").appendChild(span);
}

function inspect(text, what, top, kind) {
  const el = $("inspect");
  el.textContent = "";
  const code = document.createElement("code");
  code.textContent = JSON.stringify(text);
  el.append(`${kind} token `, code, `: ${what}`);
  if (top) {
    const alts = Object.entries(top).map(([t, lp]) => `${JSON.stringify(t)} ${(-lp / LN2).toFixed(1)}`).join(", ");
    el.append(` · most likely: ${alts}`);
  }
}

function requestBody() {
  const chat = $("chat-mode").checked;
  const text = $("prompt").value;
  const body = {
    prompt: chat ? `User: ${text}\nAssistant:` : text,
    stream: true, echo: true, logprobs: 5,
    temperature: Number($("temperature").value), top_p: Number($("top-p").value),
    top_k: Number($("top-k").value) || null, max_tokens: Number($("max-tokens").value),
  };
  if (chat) body.stop = ["\nUser:"];
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

async function generate() {
  $("output").textContent = "";
  $("inspect").textContent = "Hover a token to see its bits.";
  carried = null;
  setBusy(true);
  const started = performance.now();
  let promptBits = 0, promptChars = 0, generated = 0, first = null, reason = "";
  controller = new AbortController();
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(`${err.error.message}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", promptDone = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let at;
      while ((at = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, at).trim();
        buffer = buffer.slice(at + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices[0];
        const lp = choice.logprobs;
        if (lp) {
          const kind = promptDone ? "gen" : "prompt";
          lp.tokens.forEach((t, i) => {
            addToken(t, lp.token_logprobs[i], lp.top_logprobs[i], kind);
            if (kind === "prompt" && lp.token_logprobs[i] != null) { promptBits -= lp.token_logprobs[i] / LN2; promptChars += t.length; }
          });
          if (kind === "gen") { generated += lp.tokens.length; if (first == null) first = performance.now(); }
        }
        promptDone = true;
        if (choice.finish_reason) reason = choice.finish_reason;
        status(promptBits, promptChars, generated, started, first, reason);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      const el = $("status");
      el.textContent = `error: ${e.message}`;
      el.className = "error";
    }
  } finally {
    setBusy(false);
    controller = null;
  }
}

function status(promptBits, promptChars, generated, started, first, reason) {
  const el = $("status");
  el.className = "muted";
  const secs = (performance.now() - started) / 1000;
  const parts = [`prompt ${promptBits.toFixed(1)} bits` + (promptChars ? ` (${(promptBits / promptChars).toFixed(2)} bits/char)` : "")];
  parts.push(`${generated} tokens in ${secs.toFixed(1)} s`);
  if (first != null) parts.push(`first token ${((first - started) / 1000).toFixed(2)} s`);
  if (reason) parts.push(`finished: ${reason}`);
  el.textContent = parts.join(" · ");
}

function setBusy(busy) {
  $("go").disabled = busy;
  $("stop").disabled = !busy;
}

$("go").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(2); });
$("top-p").addEventListener("input", () => { $("top-p-value").textContent = Number($("top-p").value).toFixed(2); });
$("temperature-value").textContent = Number($("temperature").value).toFixed(2);
loadCard().catch((e) => { $("model-name").textContent = `model card unavailable: ${e.message}`; });
