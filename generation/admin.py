from django.contrib import admin, messages
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.html import format_html

from core.forms import saved

from . import selectors, services
from .forms import GenerationBatchForm, PromptImportForm, RegisterModelForm
from .models import GeneratedImage, GenerationBatch, Prompt, PromptSet, TextToImageModel


def render_form_page(model_admin, request, form, title: str, intro: str = ""):
    """The admin page for Needle's service-backed forms (register, import, new batch)."""
    context = {
        **model_admin.admin_site.each_context(request),
        "form": form,
        "title": title,
        "intro": intro,
        "opts": model_admin.model._meta,
    }
    return render(request, "admin/generation/form_page.html", context)


@admin.register(TextToImageModel)
class TextToImageModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "pipeline_class",
        "source",
        "short_fingerprint",
        "default_steps",
        "default_guidance_scale",
        "default_width",
        "default_height",
        "default_scheduler",
        "created_at",
    ]
    list_filter = ["source", "pipeline_class"]
    search_fields = ["name", "description", "pipeline_path"]
    readonly_fields = [
        "pipeline_path",
        "pipeline_class",
        "weights_fingerprint",
        "weights_bytes",
        "source",
        "parent",
        "registered_by",
        "created_at",
    ]

    @admin.display(description="fingerprint")
    def short_fingerprint(self, obj):
        return obj.weights_fingerprint[:12]

    def has_change_permission(self, request, obj=None):
        # Weights and defaults are part of the image key's meaning: register a new model instead.
        return False

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            return redirect("admin:index")
        form = RegisterModelForm(request.POST or None)
        model = saved(request, form, form.register, request.user)
        if model is not None:
            self.message_user(
                request,
                f"Registered {model.name} ({model.pipeline_class}, fingerprint {model.weights_fingerprint[:12]}).",
                messages.SUCCESS,
            )
            return redirect("admin:generation_texttoimagemodel_changelist")
        return render_form_page(self, request, form, "Register a text-to-image model")


class PromptInline(admin.TabularInline):
    model = Prompt
    fields = ["position", "text", "category", "challenge"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    max_num = 0


@admin.register(PromptSet)
class PromptSetAdmin(admin.ModelAdmin):
    list_display = ["name", "prompt_count", "source_filename", "created_at"]
    readonly_fields = ["source_filename", "source_sha256", "created_at"]
    search_fields = ["name"]
    inlines = [PromptInline]
    change_list_template = "admin/generation/promptset/change_list.html"

    @admin.display(description="prompts")
    def prompt_count(self, obj):
        return obj.prompts.count()

    def get_urls(self):
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="generation_promptset_import")
        ] + super().get_urls()

    def add_view(self, request, form_url="", extra_context=None):
        return redirect("admin:generation_promptset_import")

    def import_view(self, request):
        if not self.has_add_permission(request):
            return redirect("admin:index")
        form = PromptImportForm(request.POST or None, request.FILES or None)
        result = saved(request, form, form.import_set)
        if result is not None:
            prompt_set, parsed = result
            self.message_user(
                request, f"Imported {len(parsed.prompts)} prompts into {prompt_set.name!r}.", messages.SUCCESS
            )
            for dup in parsed.duplicates[:20]:
                self.message_user(request, str(dup), messages.WARNING)
            if len(parsed.duplicates) > 20:
                self.message_user(
                    request, f"... and {len(parsed.duplicates) - 20} more duplicates skipped", messages.WARNING
                )
            return redirect("admin:generation_promptset_change", prompt_set.pk)
        return render_form_page(
            self,
            request,
            form,
            "Import a prompt set",
            "CSV or JSONL with a 'prompt' column or key (optional category, challenge, note), or a PartiPrompts "
            "TSV. A file with any problem imports nothing; duplicates are skipped and listed.",
        )


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["text", "category", "challenge", "prompt_set", "position"]
    list_filter = ["prompt_set", "category", "challenge"]
    search_fields = ["text"]

    def has_add_permission(self, request):
        return False


@admin.register(GenerationBatch)
class GenerationBatchAdmin(admin.ModelAdmin):
    list_display = ["__str__", "prompt_set", "model_names", "seed_count", "progress", "created_at"]
    actions = ["dispatch"]
    readonly_fields = [
        "prompt_set",
        "seeds",
        "inference_batch_size",
        "chunk_size",
        "created_by",
        "created_at",
        "dispatched_at",
        "completed_at",
        "error",
    ]

    @admin.display(description="models")
    def model_names(self, obj):
        return ", ".join(bm.model.name for bm in obj.batch_models.select_related("model"))

    @admin.display(description="seeds")
    def seed_count(self, obj):
        return len(obj.seeds)

    @admin.display(description="progress")
    def progress(self, obj):
        p = selectors.batch_progress(obj)
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {} ({})',
            p.total,
            p.done,
            p.done,
            p.total,
            selectors.batch_status(obj, p),
        )

    def add_view(self, request, form_url="", extra_context=None):
        form = GenerationBatchForm(request.POST or None)
        batch = saved(request, form, form.create, request.user)
        if batch is not None:
            self.message_user(request, f"Created {batch}.", messages.SUCCESS)
            return redirect("generation:batch_detail", batch.pk)
        return render_form_page(
            self,
            request,
            form,
            "New generation batch",
            "Every model renders every prompt of the set with every seed. Parameters left blank take each "
            "model's defaults; set them to compare models at identical settings.",
        )

    @admin.action(description="Queue the missing images of the selected batches (start or resume)")
    def dispatch(self, request, queryset):
        sent = sum(services.dispatch_batch(batch) for batch in queryset)
        self.message_user(request, f"Queued {sent} chunk task(s).", messages.SUCCESS)


@admin.register(GeneratedImage)
class GeneratedImageAdmin(admin.ModelAdmin):
    list_display = ["thumbnail", "model", "prompt", "seed", "width", "height", "seconds", "device", "created_at"]
    list_filter = ["model", "device"]
    list_select_related = ["model", "prompt"]
    readonly_fields = [f.name for f in GeneratedImage._meta.fields]

    @admin.display(description="image")
    def thumbnail(self, obj):
        url = reverse("generation:image", args=[obj.sha256])
        return format_html('<img src="{}" width="64" height="64" alt="">', url)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
