// A small Markdown renderer for chat replies, safe by construction.
//
// It builds DOM nodes (createElement, text nodes) and never parses HTML: text that looks like
// markup (<script>, <img onerror=...>) is shown as text. Links keep only http(s) and mailto
// URLs; any other link ([x](javascript:...), data:, relative) is shown as its label. Images
// are shown as links (no request leaves the page to load them). The page re-renders a reply
// on every repaint while it streams, so half a document must render well: an unclosed code
// fence is code up to the end, an unclosed ** is plain text.
//
// Supported: paragraphs (line breaks kept), # headings, ``` / ~~~ fences, `code`, **strong**,
// *em*, _em_, ~~del~~, [links](https://...), <https://...>, bare https:// URLs, - * + and
// 1. lists (nested by indentation), > quotes, --- rules, | tables |.
"use strict";

const Markdown = (() => {
  const MAX_DEPTH = 12; // deeper quotes and lists render as text: no runaway recursion

  const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$/;
  const TABLE_RULE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  const PUNCTUATION = /[!-/:-@[-`{-~]/;
  const WORD = /[\p{L}\p{N}]/u;
  const SPACE = /\s/;

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  // An http(s) or mailto URL, or null. Browsers ignore control characters and spaces in a
  // scheme ("java\tscript:"), so a URL holding any is refused outright.
  function safeUrl(raw) {
    const url = raw.trim();
    if (/[\u0000-\u0020\u007f-\u009f]/.test(url)) return null;
    return /^(https?:\/\/|mailto:)/i.test(url) ? url : null;
  }

  function link(url, parent) {
    const a = el("a");
    a.setAttribute("href", url);
    a.setAttribute("target", "_blank");
    a.setAttribute("rel", "noopener noreferrer nofollow");
    parent.append(a);
    return a;
  }

  // -- blocks ---------------------------------------------------------------------------------

  function indentOf(line) {
    return line.match(/^ */)[0].length;
  }

  function closesFence(line, fence) {
    const m = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(line);
    return m !== null && m[1][0] === fence[0] && m[1].length >= fence.length;
  }

  // Lines that end a paragraph (an ordered list only when it starts at 1, so "2024. was"
  // stays text).
  function startsBlock(line) {
    if (FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)) {
      return true;
    }
    const m = ITEM.exec(line);
    return m !== null && m[3] !== undefined && (!/\d/.test(m[2]) || /^1[.)]$/.test(m[2]));
  }

  function isTable(lines, i) {
    return (
      i + 1 < lines.length &&
      lines[i].includes("|") &&
      lines[i + 1].includes("|") &&
      TABLE_RULE.test(lines[i + 1])
    );
  }

  function blocks(lines, parent, depth) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) {
        i++;
      } else if ((m = FENCE.exec(line))) {
        const fence = m[1];
        const body = [];
        for (i++; i < lines.length && !closesFence(lines[i], fence); i++) body.push(lines[i]);
        i++;
        const pre = el("pre");
        const lang = m[2].replace(/[^\w+#.-]/g, "").slice(0, 32);
        const code = el("code", lang ? "language-" + lang : "");
        code.textContent = body.join("\n");
        pre.append(code);
        parent.append(pre);
      } else if ((m = HEADING.exec(line))) {
        const h = el("h" + m[1].length);
        inline(m[2] || "", h, 0);
        parent.append(h);
        i++;
      } else if (RULE.test(line)) {
        parent.append(el("hr"));
        i++;
      } else if (depth < MAX_DEPTH && QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) body.push(m[1]);
        const quote = el("blockquote");
        blocks(body, quote, depth + 1);
        parent.append(quote);
      } else if (depth < MAX_DEPTH && ITEM.test(line)) {
        i = list(lines, i, parent, depth);
      } else if (isTable(lines, i)) {
        i = table(lines, i, parent);
      } else {
        const para = [line];
        for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) {
          if (isTable(lines, i)) break;
          para.push(lines[i]);
        }
        const p = el("p");
        inline(para.map((l) => l.trim()).join("\n"), p, 0);
        parent.append(p);
      }
    }
  }

  function list(lines, i, parent, depth) {
    const first = ITEM.exec(lines[i]);
    const base = first[1].length;
    const ordered = /\d/.test(first[2]);
    const marker = ordered ? first[2].slice(-1) : first[2];
    const listEl = el(ordered ? "ol" : "ul");
    if (ordered) {
      const start = parseInt(first[2], 10);
      if (start !== 1) listEl.setAttribute("start", String(start));
    }
    const sameList = (m) =>
      m !== null && m[1].length === base && (ordered ? m[2].slice(-1) === marker && /\d/.test(m[2]) : m[2] === marker);
    let m = first;
    let anyLoose = false;
    while (sameList(m)) {
      const inner = base + m[2].length + 1;
      const body = [m[3] || ""];
      let loose = false;
      for (i++; i < lines.length; i++) {
        const l = lines[i];
        if (!l.trim()) {
          let j = i + 1;
          while (j < lines.length && !lines[j].trim()) j++;
          if (j < lines.length && indentOf(lines[j]) >= base + 2) {
            body.push("");
            loose = true;
            continue;
          }
          break;
        }
        if (indentOf(l) >= base + 2) {
          body.push(l.slice(Math.min(indentOf(l), inner)));
        } else if (ITEM.test(l) || startsBlock(l) || loose) {
          break;
        } else {
          body.push(l); // a lazy continuation of the item's paragraph
        }
      }
      const li = el("li");
      blocks(body, li, depth + 1);
      listEl.append(li);
      let j = i;
      while (j < lines.length && !lines[j].trim()) j++;
      m = j < lines.length ? ITEM.exec(lines[j]) : null;
      if (sameList(m)) {
        anyLoose ||= loose || j > i; // items apart: a loose list
        i = j;
      } else {
        anyLoose ||= loose;
      }
    }
    if (!anyLoose) {
      // A tight list's items hold their text directly, not in paragraphs.
      for (const li of listEl.children) {
        for (const p of [...li.children]) {
          if (p.tagName === "P") p.replaceWith(...p.childNodes);
        }
      }
    }
    parent.append(listEl);
    return i;
  }

  function cells(line) {
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
  }

  function table(lines, i, parent) {
    const head = cells(lines[i]);
    const aligns = cells(lines[i + 1]).map((c) =>
      c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : ""
    );
    const wrap = el("div", "table");
    const t = el("table");
    const row = (values, tag) => {
      const tr = el("tr");
      head.forEach((_, n) => {
        const cell = el(tag, aligns[n] ? "align-" + aligns[n] : "");
        inline(values[n] || "", cell, 0);
        tr.append(cell);
      });
      return tr;
    };
    const thead = el("thead");
    thead.append(row(head, "th"));
    const tbody = el("tbody");
    for (i += 2; i < lines.length && lines[i].trim() && lines[i].includes("|"); i++) {
      tbody.append(row(cells(lines[i]), "td"));
    }
    t.append(thead, tbody);
    wrap.append(t);
    parent.append(wrap);
    return i;
  }

  // -- inline ---------------------------------------------------------------------------------

  function runAt(text, i) {
    let j = i;
    while (text[j] === text[i]) j++;
    return j - i;
  }

  // Where a closing run of `size` `ch` characters starts after `from`, or -1. Runs of
  // another size are skipped whole (they open or close something nested).
  function closer(text, from, ch, size, noCloser) {
    const key = ch + size;
    if (from >= (noCloser[key] ?? Infinity)) return -1;
    for (let j = from; j < text.length; j++) {
      if (text[j] === "\\") {
        j++;
        continue;
      }
      if (text[j] === "`") {
        j += runAt(text, j) - 1;
        continue;
      }
      if (text[j] !== ch) continue;
      const run = runAt(text, j);
      const fits = size === 3 ? run >= 3 : size === 2 ? run === 2 || run > 3 : run === 1 || run === 3;
      const before = text[j - 1];
      const after = text[j + run];
      if (
        fits &&
        !SPACE.test(before) &&
        !(ch === "_" && after !== undefined && WORD.test(after))
      ) {
        return run > size ? j + run - size : j;
      }
      j += run - 1;
    }
    noCloser[key] = Math.min(noCloser[key] ?? Infinity, from);
    return -1;
  }

  // [label](url) starting at `i` (the "["): [labelEnd, urlStart, end] or null.
  function linkAt(text, i) {
    let depth = 0;
    let j = i;
    for (; j < text.length; j++) {
      if (text[j] === "\\") j++;
      else if (text[j] === "[") depth++;
      else if (text[j] === "]" && --depth === 0) break;
    }
    if (j >= text.length || text[j + 1] !== "(") return null;
    const close = text.indexOf(")", j + 2);
    if (close === -1 || text.slice(j + 2, close).includes("\n")) return null;
    return [j, j + 2, close];
  }

  const BARE_URL = /^https?:\/\/[^\s<>\u0000-\u001f\u007f-\u009f]*[^\s<>.,:;"'!?)\]*_~\u0000-\u001f\u007f-\u009f]/i;
  const AUTOLINK = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i;

  function inline(text, parent, depth, noCloser = {}) {
    let plain = "";
    const flush = () => {
      if (plain) parent.append(document.createTextNode(plain));
      plain = "";
    };
    const wrap = (tag, from, to) => {
      flush();
      const node = el(tag);
      inline(text.slice(from, to), node, depth + 1);
      parent.append(node);
    };
    let i = 0;
    while (i < text.length) {
      const ch = text[i];
      const next = text[i + 1];
      let m;
      if (ch === "\\" && next !== undefined && PUNCTUATION.test(next)) {
        plain += next;
        i += 2;
      } else if (ch === "\n") {
        flush();
        parent.append(el("br"));
        i++;
      } else if (ch === "`") {
        const run = runAt(text, i);
        let end = -1;
        for (let j = text.indexOf("`", i + run); j !== -1; j = text.indexOf("`", j + runAt(text, j))) {
          if (runAt(text, j) === run) {
            end = j;
            break;
          }
        }
        if (end === -1) {
          plain += text.slice(i, i + run);
          i += run;
        } else {
          flush();
          let body = text.slice(i + run, end).replace(/\n/g, " ");
          if (/^ .*[^ ].* $/.test(body)) body = body.slice(1, -1);
          const code = el("code");
          code.textContent = body;
          parent.append(code);
          i = end + run;
        }
      } else if ((ch === "[" || (ch === "!" && next === "[")) && depth < MAX_DEPTH) {
        const image = ch === "!";
        const found = linkAt(text, image ? i + 1 : i);
        if (found === null) {
          plain += ch;
          i++;
          continue;
        }
        const [labelEnd, urlStart, end] = found;
        const labelStart = image ? i + 2 : i + 1;
        const dest = text.slice(urlStart, end).trim().split(/[ \t]+/)[0] || "";
        const url = safeUrl(dest.replace(/^<(.*)>$/, "$1"));
        flush();
        const target = url === null ? parent : link(url, parent);
        if (image) target.append(document.createTextNode("image: "));
        inline(text.slice(labelStart, labelEnd), target, depth + 1);
        i = end + 1;
      } else if (ch === "<" && (m = AUTOLINK.exec(text.slice(i, i + 2048)))) {
        const url = safeUrl(m[1]);
        if (url === null) {
          plain += ch;
          i++;
        } else {
          flush();
          link(url, parent).textContent = url;
          i += m[0].length;
        }
      } else if (
        (ch === "h" || ch === "H") &&
        !WORD.test(text[i - 1] || " ") &&
        (m = BARE_URL.exec(text.slice(i, i + 2048))) &&
        safeUrl(m[0]) !== null
      ) {
        flush();
        link(m[0], parent).textContent = m[0];
        i += m[0].length;
      } else if ((ch === "*" || ch === "_") && depth < MAX_DEPTH) {
        const run = runAt(text, i);
        const prev = text[i - 1];
        const opens =
          next !== undefined &&
          !SPACE.test(text[i + run] || " ") &&
          !(ch === "_" && prev !== undefined && WORD.test(prev));
        let done = false;
        for (const size of opens ? [Math.min(run, 3), 2, 1].filter((s) => s <= run) : []) {
          const end = closer(text, i + run + 1, ch, size, noCloser);
          if (end === -1) continue;
          flush();
          plain = text.slice(i, i + run - size); // an opener run longer than needed
          flush();
          const inner = el(size === 1 ? "em" : "strong");
          inline(text.slice(i + run, end), inner, depth + 1);
          if (size === 3) {
            const em = el("em");
            em.append(inner);
            parent.append(em);
          } else {
            parent.append(inner);
          }
          i = end + size;
          done = true;
          break;
        }
        if (!done) {
          plain += text.slice(i, i + run);
          i += run;
        }
      } else if (ch === "~" && next === "~" && text[i + 2] !== "~" && depth < MAX_DEPTH) {
        const end = text.indexOf("~~", i + 3);
        if (end === -1 || SPACE.test(text[i + 2] || " ")) {
          plain += "~~";
          i += 2;
        } else {
          wrap("del", i + 2, end);
          i = end + 2;
        }
      } else {
        plain += ch;
        i++;
      }
    }
    flush();
  }

  // The Markdown `text` as a DocumentFragment.
  function render(text) {
    const fragment = document.createDocumentFragment();
    blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment, 0);
    return fragment;
  }

  return { render, safeUrl };
})();
