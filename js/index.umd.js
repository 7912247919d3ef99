/*
 * The App side of the @cliprnn/clip-as-rnn plugin: one JS operator, `refresh_samples`.
 *
 * Why: the FiftyOne App (1.22) keeps its own copy of every sample it has shown in the sample
 * modal (a Relay record `<id>-modal`). After a Python operator of this plugin rewrites labels
 * (Apply mask edits, Semantic mask -> instances, Edit mask classes), an Annotate edit on such a
 * copy is answered "412 Version Mismatch", and the App then saves its old labels over the new
 * ones. The Python operators trigger this operator after they write: it replaces the App's copy
 * of each rewritten sample it holds with the stored one (the App's own `useRefreshSample`, the
 * path it takes for its own saves), closing and reopening the modal when it shows one of them,
 * so the Annotate tab starts again from the stored labels. Nothing needs reloading.
 *
 * Hand-written UMD-style script: it uses only the globals the App exposes to plugins
 * (`__foo__` operators, `__fos__` state, `__fou__` utilities); no build step. In an App
 * without those state hooks it reloads the page instead, the one other way to drop the copies.
 */
(function () {
  "use strict";

  var PLUGIN = "@cliprnn/clip-as-rnn";
  var foo = window.__foo__;
  var fos = window.__fos__;
  var fou = window.__fou__;
  if (!foo || !fos || !foo.Operator || !foo.registerOperator) {
    console.error(PLUGIN + ": the App does not expose __foo__/__fos__; refresh_samples unavailable");
    return;
  }

  /** Whether this App offers what a refresh without a page reload needs. */
  var FINE = !!(
    fos.useRefreshSample &&
    fos.useSetExpandedSample &&
    fos.useClearModal &&
    fos.getCurrentEnvironment &&
    fos.datasetName &&
    fos.view &&
    fos.modalSelector
  );

  var QUERY =
    "query CliprnnRefreshSample($dataset: String!, $view: BSONArray!, $filter: SampleFilter!) {\n" +
    "  sample(dataset: $dataset, view: $view, filter: $filter) {\n" +
    "    __typename\n" +
    "    ... on ImageSample { id sample }\n" +
    "    ... on VideoSample { id sample }\n" +
    "    ... on PointCloudSample { id sample }\n" +
    "    ... on ThreeDSample { id sample }\n" +
    "    ... on UnknownSample { id sample }\n" +
    "  }\n" +
    "}";

  /** Ids among `ids` (all when null) whose sample the App holds a modal copy of: only the
   * sample modal edits labels (the grid's thumbnails are redrawn by `reload_samples`). */
  function heldIds(ids) {
    var env = fos.getCurrentEnvironment && fos.getCurrentEnvironment();
    if (!env) return ids || [];
    var source = env.getStore().getSource();
    if (ids) {
      return ids.filter(function (id) {
        return !!source.get(id + "-modal");
      });
    }
    return source
      .getRecordIDs()
      .filter(function (rid) {
        return /^[0-9a-f]{24}-modal$/.test(rid);
      })
      .map(function (rid) {
        return rid.slice(0, 24);
      });
  }

  async function fetchSample(datasetName, view, id) {
    var fetcher = fou && fou.getFetchFunction ? fou.getFetchFunction() : null;
    var body = { query: QUERY, variables: { dataset: datasetName, view: view || [], filter: { id: id } } };
    var res;
    if (fetcher) {
      res = await fetcher("POST", "/graphql", body);
    } else {
      var r = await fetch("/graphql", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      res = await r.json();
    }
    var sample = res && res.data && res.data.sample;
    if (!sample || !sample.sample) return null;
    return typeof sample.sample === "string" ? JSON.parse(sample.sample) : sample.sample;
  }

  class RefreshSamples extends foo.Operator {
    get config() {
      return new foo.OperatorConfig({
        name: "refresh_samples",
        label: "Refresh samples the App holds (CLIP as RNN)",
        unlisted: true,
      });
    }

    useHooks() {
      // present in every page of one App version, so the hooks run in the same order
      if (!FINE) return {};
      return {
        refreshSample: fos.useRefreshSample(),
        setExpanded: fos.useSetExpandedSample(),
        clearModal: fos.useClearModal(),
      };
    }

    async execute(ctx) {
      var params = ctx.params || {};
      var hooks = ctx.hooks;
      if (!FINE) {
        // an App without these hooks: a page reload is the only way to drop its copies
        window.location.reload();
        return { refreshed: [], failed: [], reloaded: true };
      }
      var state = ctx.state;
      var ids = heldIds(Array.isArray(params.ids) ? params.ids : null);
      var datasetName = await state.snapshot.getPromise(fos.datasetName);
      var view = await state.snapshot.getPromise(fos.view);
      var modal = await state.snapshot.getPromise(fos.modalSelector);
      var modalId = modal && modal.id ? modal.id : null;
      // The Python operator closes the modal before this runs (`reopen` names the sample it
      // showed); close it here too in case this runs first.
      var reopenId = params.reopen || (modalId && ids.indexOf(modalId) >= 0 ? modalId : null);
      if (reopenId && modalId) hooks.clearModal();
      var refreshed = [];
      var failed = [];
      for (var i = 0; i < ids.length; i++) {
        try {
          var sample = await fetchSample(datasetName, view, ids[i]);
          if (sample) {
            hooks.refreshSample(sample);
            refreshed.push(ids[i]);
          }
        } catch (e) {
          console.error(PLUGIN + ": could not refresh sample " + ids[i], e);
          failed.push(ids[i]);
        }
      }
      if (reopenId) {
        // let the closed modal unmount before the sample opens again from the fresh copy
        await new Promise(function (resolve) {
          setTimeout(resolve, 100);
        });
        await hooks.setExpanded({ id: reopenId, groupId: modal ? modal.groupId : undefined });
      }
      window.__cliprnn__ = window.__cliprnn__ || { refreshes: [] };
      window.__cliprnn__.refreshes.push({
        refreshed: refreshed,
        failed: failed,
        reopened: reopenId,
      });
      return { refreshed: refreshed, failed: failed };
    }
  }

  foo.registerOperator(RefreshSamples, PLUGIN);
})();
