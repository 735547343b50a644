// Show the text a WanFlow node returns in its `ui.text` (e.g. WanFlow Model Info) inside the node,
// as a read-only box. Display only: the box is not saved in the workflow nor sent to the server.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES_WITH_TEXT = new Set(["WanFlowModelInfo", "WanFlowLoadLoRA", "WanFlowTrainLoRA", "WanFlowTrainFull", "WanFlowSRPOTrain"]);

app.registerExtension({
  name: "WanFlow.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_TEXT.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === "wanflow_text");
      if (!widget) {
        widget = ComfyWidgets.STRING(this, "wanflow_text", ["STRING", { multiline: true }], app).widget;
        widget.serialize = false;
        if (widget.inputEl) widget.inputEl.readOnly = true;
      }
      widget.value = text;
      // room for the ~7 lines of text without the user resizing the node
      const [minW, minH] = this.computeSize();
      this.setSize([Math.max(this.size[0], minW, 380), Math.max(this.size[1], minH, 200)]);
      app.graph.setDirtyCanvas(true, true);
    };
  },
});
