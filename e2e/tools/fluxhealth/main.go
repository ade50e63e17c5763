// fluxhealth evaluates Flux healthCheckExprs against objects with Flux's own evaluator
// (github.com/fluxcd/pkg/runtime/cel, what kustomize-controller runs), so the expressions in
// docs/gitops are tested by the code that will run them, not by a re-implementation.
//
// Input (stdin): {"exprs": {"current": "...", "inProgress": "...", "failed": "..."}, "objects": [{...}]}
// Output (stdout): one JSON list, per object either {"status": "Current"|"InProgress"|"Failed"} or
// {"error": "..."} (kustomize-controller keeps waiting on an object whose expression errors).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
)

type input struct {
	Exprs   kustomize.HealthCheckExpressions `json:"exprs"`
	Objects []json.RawMessage                `json:"objects"`
}

type result struct {
	Status string `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "reading input:", err)
		os.Exit(2)
	}
	evaluator, err := cel.NewStatusEvaluator(&in.Exprs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "expressions:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(in.Objects))
	for _, raw := range in.Objects {
		// As client-go decodes API objects: whole numbers become int64 (encoding/json would make them
		// float64, and Flux's observedGeneration check would silently skip them).
		obj := map[string]any{}
		if err := utiljson.Unmarshal(raw, &obj); err != nil {
			fmt.Fprintln(os.Stderr, "reading an object:", err)
			os.Exit(2)
		}
		res, err := evaluator.Evaluate(context.Background(), &unstructured.Unstructured{Object: obj})
		if err != nil {
			results = append(results, result{Error: err.Error()})
			continue
		}
		results = append(results, result{Status: string(res.Status)})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		os.Exit(2)
	}
}
