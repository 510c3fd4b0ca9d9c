"""The operators' pages beside the admin (btcloan/urls.py mounts them under /admin/)."""

from django.contrib import admin
from django.urls import path

from loans.admin_views import dashboard_view

urlpatterns = [
    path("", admin.site.admin_view(dashboard_view), name="admin-dashboard"),
]
