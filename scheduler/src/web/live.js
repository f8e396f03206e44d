// baton's web UI: the little script its pages need, no framework.
// - Live pages: a <main data-live="URL"> listens to that event source (the run's events);
//   on each `change` it fetches the page again and swaps in its parts (the elements with
//   `data-part` and an id), so the page moves without a reload; `end` stops listening.
//   With data-poll="MS" it also refreshes on that period (a task run's logs).
// - Long lists: a <div data-rows="URL" data-next="N" data-total="T"> fetches its next rows
//   from URL&offset=N as it is scrolled to the bottom (the first page is in the HTML, and
//   pager links remain for keyboards and no script).
// The time of the first frame drawn once the page is parsed (the browser test reports it).
requestAnimationFrame(() => {
  window.batonFirstFrame = performance.now();
});

(() => {
  "use strict";

  function live(main) {
    let busy = false;
    let again = false;
    const refresh = async () => {
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      try {
        const answer = await fetch(location.href, { credentials: "same-origin" });
        // A redirect (to the sign-in page, say) is not this page: leave it as it is.
        if (answer.ok && !answer.redirected) {
          const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
          for (const part of doc.querySelectorAll("[data-part]")) {
            const here = document.getElementById(part.id);
            if (!here || busyWith(here)) continue;
            // Logs and other boxes stay where they were scrolled to.
            const scrolled = [...here.querySelectorAll("pre")].map((p) => p.scrollTop);
            here.replaceWith(part);
            part.querySelectorAll("pre").forEach((p, i) => {
              if (scrolled[i]) p.scrollTop = scrolled[i];
            });
          }
          const fresh = doc.querySelector("main");
          if (timer && fresh && !fresh.dataset.poll) {
            clearInterval(timer);
            timer = null;
          }
          bindLists();
          document.body.dataset.refreshed = String(Date.now());
        }
      } catch (e) {
        // The next event or period tries again.
      }
      busy = false;
      if (again) {
        again = false;
        setTimeout(refresh, 200);
      }
    };
    let timer = main.dataset.poll ? setInterval(refresh, Number(main.dataset.poll)) : null;
    const events = new EventSource(main.dataset.live);
    events.addEventListener("change", refresh);
    events.addEventListener("end", () => {
      events.close();
      refresh();
      if (timer) clearInterval(timer);
      timer = null;
    });
  }

  // A part the user is at: a control in it has the focus, or its list was scrolled (or
  // grew past its first page). It is left as it is rather than swapped under them.
  function busyWith(part) {
    const focused = document.activeElement;
    if (focused && focused !== document.body && part.contains(focused)) return true;
    return [...part.querySelectorAll("[data-rows]")].some(
      (box) => box.hasAttribute("data-grown") || box.scrollTop > 0,
    );
  }

  function bindList(box) {
    if (box.dataset.bound) return;
    box.dataset.bound = "1";
    let loading = false;
    const more = async () => {
      const next = Number(box.dataset.next);
      const total = Number(box.dataset.total);
      if (loading || next >= total) return;
      if (box.scrollTop + box.clientHeight < box.scrollHeight - 120) return;
      loading = true;
      try {
        const url = new URL(box.dataset.rows, location.href);
        url.searchParams.set("offset", String(next));
        const answer = await fetch(url, { credentials: "same-origin" });
        if (answer.ok && !answer.redirected) {
          const rows = await answer.text();
          const body = box.querySelector("tbody");
          body.insertAdjacentHTML("beforeend", rows);
          const added = (rows.match(/<tr/g) || []).length;
          box.dataset.next = String(added > 0 ? next + added : total);
          box.setAttribute("data-grown", "1");
        }
      } catch (e) {
        // Scrolling again tries again.
      }
      loading = false;
    };
    box.addEventListener("scroll", more, { passive: true });
  }

  function bindLists() {
    document.querySelectorAll("[data-rows]").forEach(bindList);
  }

  bindLists();
  const main = document.querySelector("main[data-live]");
  if (main) live(main);
})();

// Quick Run: values are JSON; a field that is not is marked before anything is sent.
(() => {
  "use strict";
  const form = document.querySelector("form[data-json-check]");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    for (const input of form.querySelectorAll("input.json")) {
      input.setCustomValidity("");
      if (input.value.trim() === "") continue;
      try {
        JSON.parse(input.value);
      } catch (e) {
        input.setCustomValidity("not JSON: a string is written in quotes");
        input.reportValidity();
        event.preventDefault();
        return;
      }
    }
  });
  form.addEventListener("input", (event) => event.target.setCustomValidity(""));
})();
